package demo

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetupNamesTheMissingShippedFileAndTheFlag(t *testing.T) {
	tests := []struct {
		flavor string
		file   string
	}{
		{flavorSEPM, configSEPM},
		{flavorCheckpoint, configCheckpoint},
		{flavorPolicyServer, configPolicyServer},
	}
	for _, tc := range tests {
		t.Run(tc.flavor, func(t *testing.T) {
			empty := t.TempDir()
			o := Options{Flavor: tc.flavor, Legacygate: "legacygate-not-started", Dir: t.TempDir(), ConfigDir: empty, Out: &bytes.Buffer{}}
			var err error
			if tc.flavor == flavorSEPM {
				_, err = setup(o)
			} else {
				_, err = setupFlavor(o)
			}
			if err == nil || !strings.Contains(err.Error(), filepath.Join(empty, tc.file)) || !strings.Contains(err.Error(), "--config-dir") {
				t.Fatalf("error %v, want one naming %s and --config-dir", err, filepath.Join(empty, tc.file))
			}
		})
	}
}

func TestWithGlobalsInsertsIntoTheFirstBlockOnly(t *testing.T) {
	got, err := withGlobals("# comment\n\n{\n\tauto_https off\n}\n\nsite {\n}\n", "\tadmin X\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := "# comment\n\n{\n\tadmin X\n\tauto_https off\n}\n\nsite {\n}\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if _, err := withGlobals("# comment\nsite {\n}\n", "\tadmin X\n"); err == nil {
		t.Error("a file without global options: no error")
	}
}

func TestConfigEnvDropsTheFilesVariablesItDoesNotSet(t *testing.T) {
	t.Setenv("LEGACYGATE_HEARTBEAT_RATE", "1/1ms")
	t.Setenv("DEMO_UNRELATED", "kept")
	env := strings.Join(configEnv("rate {$LEGACYGATE_HEARTBEAT_RATE:1/60s}\nsite {$LEGACYGATE_SITE}\n",
		map[string]string{"LEGACYGATE_SITE": "127.0.0.1:1"}), "\n")
	for _, want := range []string{"DEMO_UNRELATED=kept", "LEGACYGATE_SITE=127.0.0.1:1"} {
		if !strings.Contains(env, want) {
			t.Errorf("environment lacks %s", want)
		}
	}
	if strings.Contains(env, "LEGACYGATE_HEARTBEAT_RATE") {
		t.Error("the caller's LEGACYGATE_HEARTBEAT_RATE reached the gateway; the file's default must apply")
	}
}

// TestRotationExampleKeepsCaddyfileExamplesFront guards the copy between
// the two SEPM files: an administrator switching to rotation.Caddyfile for
// a window keeps the same global options and client protocol.
func TestRotationExampleKeepsCaddyfileExamplesFront(t *testing.T) {
	dir := DefaultConfigDir()
	example, err := readShipped(dir, configSEPM)
	if err != nil {
		t.Fatal(err)
	}
	rotation, err := readShipped(dir, configRotation)
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []struct{ from, to string }{
		{"# Global options", "}\n}\n"},
		{"# The client protocol:", "\n}\n"},
		{"# Requests on this port naming another host", "\n}\n\n# Port 80"},
		{"# Port 80:", "\n}\n"},
	} {
		i := strings.Index(example, part.from)
		if i < 0 {
			t.Fatalf("%s lacks %q", configSEPM, part.from)
		}
		j := strings.Index(example[i:], part.to)
		if j < 0 {
			t.Fatalf("%s: no %q after %q", configSEPM, part.to, part.from)
		}
		shared := example[i : i+j]
		if !strings.Contains(rotation, shared) {
			t.Errorf("%s lacks this part of %s:\n%s", configRotation, configSEPM, shared)
		}
	}
}

func TestDemoConfigLogsToItsFileWithOrWithoutADefaultLogBlock(t *testing.T) {
	tests := []struct{ name, shipped, want string }{
		{"no log block", "{\n\tauto_https off\n}\n",
			"\tlog {\n\t\toutput file \"/d/gateway.log\"\n\t\tformat json\n\t}\n\tauto_https off\n"},
		{"a default log block", "{\n\tlog default {\n\t\texclude x\n\t}\n}\n",
			"\tlog default {\n\t\toutput file \"/d/gateway.log\"\n\t\tformat json\n\t\texclude x\n\t}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := demoConfig(tc.shipped, "127.0.0.1:1", "/d", 2, 3)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, tc.want) || strings.Count(got, "log") != strings.Count(tc.want, "log") {
				t.Fatalf("got\n%s\nwant it to hold, once,\n%s", got, tc.want)
			}
		})
	}
}
