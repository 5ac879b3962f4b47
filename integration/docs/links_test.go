// Package docs_test checks that the documentation's relative links lead
// somewhere: README.md and every page under docs/.
package docs_test

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// moduleRoot finds the repository through `go env GOMOD`, as the e2e tests do.
func moduleRoot(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	return filepath.Dir(strings.TrimSpace(string(out)))
}

// pages is README.md and every .md file under docs/, relative to root.
func pages(t *testing.T, root string) []string {
	t.Helper()
	list := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			rel, err := filepath.Rel(root, path)
			if err != nil {
				return err
			}
			list = append(list, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return list
}

var (
	fence = regexp.MustCompile("(?s)```.*?```")
	code  = regexp.MustCompile("`[^`\n]*`")
	// link matches [text](target) and ![alt](target); the target ends at
	// the first space or closing parenthesis.
	link    = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)[^)]*\)`)
	heading = regexp.MustCompile(`(?m)^#{1,6} +(.+?)\s*#*\s*$`)
)

// links returns the link targets of a Markdown page, outside code.
func links(md string) []string {
	md = fence.ReplaceAllString(md, "")
	md = code.ReplaceAllStringFunc(md, func(s string) string {
		// Keep backticks inside link text ([`x`](y)) from hiding the link:
		// only the code's content goes.
		return strings.Repeat(" ", len(s))
	})
	var out []string
	for _, m := range link.FindAllStringSubmatch(md, -1) {
		out = append(out, m[1])
	}
	return out
}

// anchors returns the GitHub anchors of a page's headings.
func anchors(md string) map[string]bool {
	md = fence.ReplaceAllString(md, "")
	seen := map[string]int{}
	out := map[string]bool{}
	for _, m := range heading.FindAllStringSubmatch(md, -1) {
		a := slug(m[1])
		if n := seen[a]; n > 0 {
			out[a+"-"+itoa(n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	}
	return out
}

// slug is GitHub's anchor for a heading: lower case, markup and
// punctuation dropped, spaces to hyphens.
func slug(h string) string {
	h = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(h, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(h) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r > 127 && isLetter(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func isLetter(r rune) bool { return strings.ContainsRune("éèàüöäç", r) }

func itoa(n int) string {
	const digits = "0123456789"
	if n < 10 {
		return digits[n : n+1]
	}
	return itoa(n/10) + digits[n%10:n%10+1]
}

func TestEveryRelativeLinkInTheDocsResolves(t *testing.T) {
	root := moduleRoot(t)
	checked := 0
	for _, page := range pages(t, root) {
		raw, err := os.ReadFile(filepath.Join(root, page))
		if err != nil {
			t.Fatal(err)
		}
		for _, target := range links(string(raw)) {
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			checked++
			path, anchor, _ := strings.Cut(target, "#")
			file := filepath.Join(root, filepath.Dir(page), filepath.FromSlash(path))
			if path == "" {
				file = filepath.Join(root, page)
			}
			info, err := os.Stat(file)
			if err != nil {
				t.Errorf("%s: link %q: %v", page, target, err)
				continue
			}
			if anchor == "" || info.IsDir() || !strings.HasSuffix(file, ".md") {
				continue
			}
			doc, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			if !anchors(string(doc))[anchor] {
				t.Errorf("%s: link %q: no heading with anchor #%s in %s", page, target, anchor, path)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no relative link found: the page list or the link pattern is wrong")
	}
}

func TestSlugIsGitHubsAnchor(t *testing.T) {
	for in, want := range map[string]string{
		"Admin API: `GET /legacygate/rotation`":                              "admin-api-get-legacygaterotation",
		"The `rewrite` block: settings documents for rotation and migration": "the-rewrite-block-settings-documents-for-rotation-and-migration",
		"`mgrsim clients`":                  "mgrsim-clients",
		"Metrics (Caddy's registry, admin)": "metrics-caddys-registry-admin",
		"TLS 1.0, RSA key exchange":         "tls-10-rsa-key-exchange",
	} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestLinksSkipsCodeAndFindsImages(t *testing.T) {
	md := "See [a](a.md#x) and ![p](p.png).\n```\n[not](b.md)\n```\n`[not](c.md)` [`d`](d.md)\n"
	got := strings.Join(links(md), " ")
	if got != "a.md#x p.png d.md" {
		t.Fatalf("links = %q, want %q", got, "a.md#x p.png d.md")
	}
}
