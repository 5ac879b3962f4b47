package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/legacygate/legacygate/integration/harness"
)

// needTool returns the path of tool, skipping the test when it is absent,
// except under CI=true where its absence fails the test.
func needTool(t *testing.T, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not installed (CI installs it)", tool)
		}
		t.Skipf("%s is not installed", tool)
	}
	return path
}

// unitUnderTest is examples/legacygate.service with its binary path
// replaced by a freshly built legacygate, written to a temporary
// directory: systemd-analyze verify checks that ExecStart exists.
func unitUnderTest(t *testing.T) (path, text string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot, "examples/legacygate.service"))
	if err != nil {
		t.Fatal(err)
	}
	text = string(data)
	if !strings.Contains(text, "/usr/local/bin/legacygate ") {
		t.Fatal("the unit does not run /usr/local/bin/legacygate")
	}
	bin := harness.Binary(t)
	path = filepath.Join(t.TempDir(), "legacygate.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(text, "/usr/local/bin/legacygate", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, text
}

func TestSystemdUnitVerifiesAndIsHardened(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	path, text := unitUnderTest(t)

	out, err := exec.Command(analyze, "verify", "--man=no", path).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}

	// What the operations kit promises (issue 15), each a line of the unit.
	for _, want := range []string{
		"User=legacygate",
		"AmbientCapabilities=CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
		"NoNewPrivileges=true",
		"ProtectSystem=strict",
		"ProtectHome=true",
		"PrivateTmp=true",
		"StateDirectory=legacygate",
		"Environment=XDG_DATA_HOME=/var/lib/legacygate",
		"Environment=XDG_CONFIG_HOME=/var/lib/legacygate/config",
		"ExecReload=/usr/local/bin/legacygate reload ",
	} {
		if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(want)).MatchString(text) {
			t.Errorf("the unit lacks %q", want)
		}
	}
	m := regexp.MustCompile(`(?m)^LimitNOFILE=(\d+)$`).FindStringSubmatch(text)
	if m == nil {
		t.Error("the unit sets no LimitNOFILE")
	} else if n, _ := strconv.Atoi(m[1]); n < 2*10000 {
		t.Errorf("LimitNOFILE=%d: 10,000 clients need a connection each plus upstream, listeners and bursts", n)
	}

	// systemd-analyze does not know legacygate's flags: every flag the unit
	// passes must be one its command lists.
	execs := regexp.MustCompile(`(?m)^Exec(?:Start|Reload)=/usr/local/bin/legacygate (\S+)(.*)$`).FindAllStringSubmatch(text, -1)
	if len(execs) != 2 {
		t.Fatalf("want ExecStart and ExecReload running /usr/local/bin/legacygate, found %d", len(execs))
	}
	for _, m := range execs {
		help, _, err := harness.Run(t, m[1], "--help")
		if err != nil {
			t.Fatalf("legacygate %s --help: %v", m[1], err)
		}
		for _, flag := range regexp.MustCompile(`--[a-z-]+`).FindAllString(m[2], -1) {
			if !strings.Contains(help, flag+" ") {
				t.Errorf("the unit runs legacygate %s %s, which has no such flag", m[1], flag)
			}
		}
	}

	// systemd's own exposure score (0 is locked down, 10 is unprotected).
	out, err = exec.Command(analyze, "security", "--offline=true", "--no-pager", path).CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
	if score == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	if v, _ := strconv.ParseFloat(string(score[1]), 64); v > 2.0 {
		t.Errorf("exposure level %s, want at most 2.0:\n%s", score[1], out)
	}
}
