package packageguard

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/smallstep/pkcs7"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/legacygate/legacygate/integration/certs"
)

// gzipped returns s compressed, as a hostile manager would send it.
func gzipped(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	if _, err := io.WriteString(zw, s); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// packageSigners are the manager's pair and an unrelated one, made once.
var packageSigners = sync.OnceValues(func() ([2]*certs.Pair, error) {
	var p [2]*certs.Pair
	for i, cn := range []string{"manager.test", "intruder.test"} {
		pair, err := certs.New(certs.Modern, cn, 2048)
		if err != nil {
			return p, err
		}
		p[i] = pair
	}
	return p, nil
})

func signPackage(t testing.TB, content []byte, pair *certs.Pair) []byte {
	t.Helper()
	sd, err := pkcs7.NewSignedData(content)
	if err != nil {
		t.Fatal(err)
	}
	sd.SetDigestAlgorithm(pkcs7.OIDDigestAlgorithmSHA256)
	if err := sd.AddSigner(pair.Cert, pair.Key, pkcs7.SignerInfoConfig{}); err != nil {
		t.Fatal(err)
	}
	sd.Detach()
	p7s, err := sd.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return p7s
}

// packageManager answers from a map of path → response and counts requests.
type packageManager struct {
	mu       sync.Mutex
	files    map[string]packageFile
	requests map[string]int
	abort    bool
}

type packageFile struct {
	status int
	header http.Header
	body   []byte
}

func (m *packageManager) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	m.mu.Lock()
	m.requests[r.Method+" "+r.URL.Path]++
	f, ok := m.files[r.URL.Path]
	m.mu.Unlock()
	if !ok {
		f = packageFile{status: http.StatusNotFound, body: []byte("not found")}
	}
	for k, v := range f.header {
		w.Header()[k] = v
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(f.body)))
	w.WriteHeader(f.status)
	if m.abort {
		w.Write(f.body[:len(f.body)/2])
		panic(http.ErrAbortHandler)
	}
	w.Write(f.body)
	return nil
}

type packageCase struct {
	content []byte
	p7s     []byte
}

func newPackageCase(t *testing.T) (packageCase, [2]*certs.Pair) {
	t.Helper()
	pairs, err := packageSigners()
	if err != nil {
		t.Fatal(err)
	}
	content := make([]byte, 64<<10)
	rand.Read(content)
	return packageCase{content: content, p7s: signPackage(t, content, pairs[0])}, pairs
}

func provisionPackageGuard(t *testing.T, g *PackageGuard) error {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := g.Provision(ctx); err != nil {
		return err
	}
	return g.Validate() // after Provision, as Caddy does
}

func writeCert(t *testing.T, pair *certs.Pair) string {
	t.Helper()
	file, _, err := pair.WriteFiles(t.TempDir(), "manager")
	if err != nil {
		t.Fatal(err)
	}
	return file
}

func TestPackageGuardForwardsOnlyVerifiedPackages(t *testing.T) {
	pc, pairs := newPackageCase(t)
	const path = "/epm/packages/EPS.msi"
	tampered := bytes.Clone(pc.content)
	tampered[100] ^= 0x01
	tests := []struct {
		name       string
		files      map[string]packageFile
		header     string // signature_header
		maxSize    int64
		abort      bool
		wantStatus int
		wantResult string
		wantReason string
	}{
		{
			name:       "valid package passes byte for byte",
			files:      map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, pc.p7s}},
			wantStatus: 200, wantResult: pkgResultVerified, wantReason: pkgReasonVerified,
		},
		{
			name:       "tampered package",
			files:      map[string]packageFile{path: {200, nil, tampered}, path + ".p7s": {200, nil, pc.p7s}},
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: "digest_mismatch",
		},
		{
			name:       "wrong signer",
			files:      map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, signPackage(t, pc.content, pairs[1])}},
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: "untrusted_key",
		},
		{
			name:       "missing .p7s",
			files:      map[string]packageFile{path: {200, nil, pc.content}},
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonMissingSignature,
		},
		{
			name:       "garbage .p7s",
			files:      map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, []byte("not CMS")}},
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: "malformed_cms",
		},
		{
			name:       "package over max_size",
			files:      map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, pc.p7s}},
			maxSize:    1024,
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonTooLarge,
		},
		{
			name:       "manager fails mid-body",
			files:      map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, pc.p7s}},
			abort:      true,
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonIncomplete,
		},
		{
			name:       "compressed package",
			files:      map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"gzip"}}, pc.content}, path + ".p7s": {200, nil, pc.p7s}},
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonContentEncoding,
		},
		{
			name:       "manager error passes through",
			files:      map[string]packageFile{path: {503, nil, []byte("busy")}},
			wantStatus: 503, wantResult: pkgResultPassed, wantReason: pkgReasonStatus,
		},
		{
			name:       "signature header",
			files:      map[string]packageFile{path: {200, http.Header{"X-Signature": {base64.StdEncoding.EncodeToString(pc.p7s)}}, pc.content}},
			header:     "X-Signature",
			wantStatus: 200, wantResult: pkgResultVerified, wantReason: pkgReasonVerified,
		},
		{
			name:       "signature header missing",
			files:      map[string]packageFile{path: {200, nil, pc.content}},
			header:     "X-Signature",
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonMissingSignature,
		},
		{
			name:       "signature header not base64",
			files:      map[string]packageFile{path: {200, http.Header{"X-Signature": {"!!!"}}, pc.content}},
			header:     "X-Signature",
			wantStatus: 502, wantResult: pkgResultRefused, wantReason: pkgReasonBadSignatureEnc,
		},
	}
	certFile := writeCert(t, pairs[0])
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &PackageGuard{UpstreamCerts: []string{certFile}, SignatureHeader: tc.header, MaxSize: tc.maxSize}
			if err := provisionPackageGuard(t, g); err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			g.logger = zap.New(core)
			before := testutil.ToFloat64(guardResults.WithLabelValues(tc.wantResult, tc.wantReason))
			m := &packageManager{files: tc.files, requests: map[string]int{}, abort: tc.abort}
			w := httptest.NewRecorder()
			if err := g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil), m); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			if w.Code != tc.wantStatus {
				t.Fatalf("status %d, want %d (body %q)", w.Code, tc.wantStatus, w.Body.Bytes()[:min(w.Body.Len(), 100)])
			}
			switch tc.wantStatus {
			case 200:
				if !bytes.Equal(w.Body.Bytes(), pc.content) {
					t.Fatal("the forwarded package differs from the manager's")
				}
			case 502:
				if w.Body.String() != packageRefusalBody || bytes.Contains(w.Body.Bytes(), pc.content[:64]) {
					t.Fatalf("refusal body %q carries more than the refusal", w.Body.Bytes()[:min(w.Body.Len(), 100)])
				}
				refused := logs.FilterMessage("package refused").FilterField(zap.String("reason", tc.wantReason))
				if refused.Len() != 1 {
					t.Fatalf("no %q log line with reason %s: %v", "package refused", tc.wantReason, logs.All())
				}
			}
			if got := testutil.ToFloat64(guardResults.WithLabelValues(tc.wantResult, tc.wantReason)) - before; got != 1 {
				t.Fatalf("metric {%s,%s} grew by %v, want 1", tc.wantResult, tc.wantReason, got)
			}
		})
	}
}

func TestPackageGuardFailsClosedOnAmbiguousAnswers(t *testing.T) {
	pc, pairs := newPackageCase(t)
	const path = "/epm/packages/EPS.msi"
	gz := []byte(gzipped(t, string(pc.content)))
	sig := packageFile{200, nil, pc.p7s}
	tests := []struct {
		name      string
		request   string
		files     map[string]packageFile
		abort     bool
		wantCode  int
		result    string
		reason    string
		named     string // the header named in the log line, "" for none
		forbidden []byte // manager bytes that must not reach the client
	}{
		{"Content-Encoding identity then gzip", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"identity", "gzip"}}, gz}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Encoding", gz},
		{"Content-Encoding empty then gzip", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"", "gzip"}}, gz}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Encoding", gz},
		{"repeated header, manager aborts mid-body", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"identity", "gzip"}}, gz}, path + ".p7s": sig}, true, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Encoding", gz[:16]},
		{"gzip alone", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"gzip"}}, gz}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonContentEncoding, "Content-Encoding", gz},
		{"identity, gzip on one line", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"identity, gzip"}}, gz}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonContentEncoding, "Content-Encoding", gz},
		{"empty Content-Encoding", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {""}}, pc.content}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonContentEncoding, "Content-Encoding", pc.content[:64]},
		{"Content-Type twice", path, map[string]packageFile{path: {200, http.Header{"Content-Type": {"application/octet-stream", "text/xml"}}, pc.content}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Type", pc.content[:64]},
		{"Content-Length under a second spelling", path, map[string]packageFile{path: {200, http.Header{"content-length": {"10"}}, pc.content}, path + ".p7s": sig}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Length", pc.content[:64]},
		{"repeated header on the signature file", path, map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, http.Header{"Content-Encoding": {"identity", "gzip"}}, pc.p7s}}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Encoding", pc.content[:64]},
		{"repeated header on a manager error", path, map[string]packageFile{path: {503, http.Header{"Content-Type": {"text/plain", "text/html"}}, []byte("busy <Profile/>")}}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Content-Type", []byte("<Profile")},
		{"signature file requested, repeated header", path + ".p7s", map[string]packageFile{path + ".p7s": {200, http.Header{"Transfer-Encoding": {"chunked", "identity"}}, pc.p7s}}, false, 502, pkgResultRefused, pkgReasonDuplicateHeader, "Transfer-Encoding", pc.p7s[:64]},
		{"signed package with Content-Encoding identity", path, map[string]packageFile{path: {200, http.Header{"Content-Encoding": {"Identity"}}, pc.content}, path + ".p7s": sig}, false, 200, pkgResultVerified, pkgReasonVerified, "", nil},
		{"signature file requested", path + ".p7s", map[string]packageFile{path + ".p7s": sig}, false, 200, pkgResultPassed, pkgReasonSignatureFile, "", nil},
	}
	certFile := writeCert(t, pairs[0])
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := &PackageGuard{UpstreamCerts: []string{certFile}}
			if err := provisionPackageGuard(t, g); err != nil {
				t.Fatal(err)
			}
			core, logs := observer.New(zapcore.InfoLevel)
			g.logger = zap.New(core)
			before := testutil.ToFloat64(guardResults.WithLabelValues(tc.result, tc.reason))
			m := &packageManager{files: tc.files, requests: map[string]int{}, abort: tc.abort}
			w := httptest.NewRecorder()
			if err := g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, tc.request, nil), m); err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			if w.Code != tc.wantCode {
				t.Fatalf("status %d, want %d (body %q)", w.Code, tc.wantCode, w.Body.Bytes()[:min(w.Body.Len(), 100)])
			}
			if got := testutil.ToFloat64(guardResults.WithLabelValues(tc.result, tc.reason)) - before; got != 1 {
				t.Fatalf("metric {%s,%s} grew by %v, want 1", tc.result, tc.reason, got)
			}
			if tc.wantCode != 502 {
				if want := tc.files[tc.request].body; !bytes.Equal(w.Body.Bytes(), want) {
					t.Fatal("the forwarded answer differs from the manager's")
				}
				return
			}
			if w.Body.String() != packageRefusalBody || bytes.Contains(w.Body.Bytes(), tc.forbidden) {
				t.Fatalf("refusal body %q carries more than the refusal", w.Body.Bytes()[:min(w.Body.Len(), 100)])
			}
			if ce := w.Header().Values("Content-Encoding"); len(ce) != 0 {
				t.Errorf("client received Content-Encoding %q", ce)
			}
			refused := logs.FilterMessage("package refused").FilterField(zap.String("reason", tc.reason)).All()
			if len(refused) != 1 {
				t.Fatalf("no %q log line with reason %s: %v", "package refused", tc.reason, logs.All())
			}
			if got, _ := refused[0].ContextMap()["header"].(string); got != tc.named {
				t.Errorf("log header %q, want %q", got, tc.named)
			}
		})
	}
}

func TestPackageGuardPassesSignatureFilesAndAsksForIdentity(t *testing.T) {
	pc, pairs := newPackageCase(t)
	const path = "/epm/packages/EPS.msi"
	g := &PackageGuard{UpstreamCerts: []string{writeCert(t, pairs[0])}}
	if err := provisionPackageGuard(t, g); err != nil {
		t.Fatal(err)
	}
	m := &packageManager{files: map[string]packageFile{path: {200, nil, pc.content}, path + ".p7s": {200, nil, pc.p7s}}, requests: map[string]int{}}

	w := httptest.NewRecorder()
	if err := g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path+".p7s", nil), m); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || !bytes.Equal(w.Body.Bytes(), pc.p7s) || m.requests["GET "+path] != 0 {
		t.Fatalf("signature file request: status %d, %d requests %v", w.Code, w.Body.Len(), m.requests)
	}

	r := httptest.NewRequest(http.MethodHead, path, nil)
	r.Header.Set("Range", "bytes=0-10")
	r.Header.Set("Accept-Encoding", "gzip")
	w = httptest.NewRecorder()
	if err := g.ServeHTTP(w, r, m); err != nil {
		t.Fatal(err)
	}
	if w.Code != 200 || w.Body.Len() != 0 || w.Header().Get("Content-Length") != strconv.Itoa(len(pc.content)) {
		t.Fatalf("HEAD: status %d, body %d bytes, Content-Length %q", w.Code, w.Body.Len(), w.Header().Get("Content-Length"))
	}
	if m.requests["GET "+path] != 1 || m.requests["GET "+path+".p7s"] != 2 {
		t.Fatalf("manager requests %v: want the package once as GET and its signature", m.requests)
	}
}

func TestPackageGuardConfigErrorsNameTheField(t *testing.T) {
	pairs, err := packageSigners()
	if err != nil {
		t.Fatal(err)
	}
	certFile := writeCert(t, pairs[0])
	tests := []struct {
		name  string
		guard PackageGuard
		field string
	}{
		{"no certificate", PackageGuard{}, "upstream_cert"},
		{"missing certificate file", PackageGuard{UpstreamCerts: []string{filepath.Join(t.TempDir(), "absent.crt")}}, "upstream_cert"},
		{"negative max_size", PackageGuard{UpstreamCerts: []string{certFile}, MaxSize: -1}, "max_size"},
		{"bad header name", PackageGuard{UpstreamCerts: []string{certFile}, SignatureHeader: "X Sig"}, "signature_header"},
		{"suffix with a slash", PackageGuard{UpstreamCerts: []string{certFile}, SignatureSuffix: "/sig"}, "signature_suffix"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := provisionPackageGuard(t, &tc.guard)
			if err == nil || !strings.Contains(err.Error(), "package_guard: "+tc.field) {
				t.Fatalf("error %v, want one naming %s", err, tc.field)
			}
		})
	}
}

func TestPackageGuardCaddyfile(t *testing.T) {
	tests := []struct {
		input   string
		want    PackageGuard
		wantErr string
	}{
		{
			input: "package_guard {\n upstream_cert a.crt b.crt\n upstream_cert c.crt\n signature_header X-Signature\n allow_sha1\n ignore_expiry\n max_size 8MiB\n}",
			want:  PackageGuard{UpstreamCerts: []string{"a.crt", "b.crt", "c.crt"}, SignatureHeader: "X-Signature", AllowSHA1: true, IgnoreExpiry: true, MaxSize: 8 << 20},
		},
		{input: "package_guard {\n upstream_cert a.crt\n signature_suffix .sig\n}", want: PackageGuard{UpstreamCerts: []string{"a.crt"}, SignatureSuffix: ".sig"}},
		{input: "package_guard {\n frobnicate\n}", wantErr: "unknown subdirective"},
		{input: "package_guard {\n signature_header\n}", wantErr: "exactly one value"},
		{input: "package_guard {\n allow_sha1 yes\n}", wantErr: "takes no value"},
		{input: "package_guard {\n max_size lots\n}", wantErr: "not a size"},
		{input: "package_guard extra", wantErr: "wrong argument count"},
	}
	for _, tc := range tests {
		t.Run(tc.input, func(t *testing.T) {
			var g PackageGuard
			err := g.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(g.UpstreamCerts, ",") != strings.Join(tc.want.UpstreamCerts, ",") || g.SignatureHeader != tc.want.SignatureHeader ||
				g.SignatureSuffix != tc.want.SignatureSuffix || g.AllowSHA1 != tc.want.AllowSHA1 || g.IgnoreExpiry != tc.want.IgnoreExpiry || g.MaxSize != tc.want.MaxSize {
				t.Fatalf("got %+v, want %+v", g, tc.want)
			}
		})
	}
}

// BenchmarkPackageGuard compares a 1 MiB package served through
// package_guard (buffer, fetch the .p7s, verify) with the bare upstream
// handler in the same run.
func BenchmarkPackageGuard(b *testing.B) {
	pairs, err := packageSigners()
	if err != nil {
		b.Fatal(err)
	}
	content := make([]byte, 1<<20)
	rand.Read(content)
	const path = "/epm/packages/EPS.msi"
	m := &packageManager{files: map[string]packageFile{path: {200, nil, content}, path + ".p7s": {200, nil, signPackage(b, content, pairs[0])}}, requests: map[string]int{}}
	file, _, err := pairs[0].WriteFiles(b.TempDir(), "manager")
	if err != nil {
		b.Fatal(err)
	}
	g := &PackageGuard{UpstreamCerts: []string{file}}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := g.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("stock", func(b *testing.B) {
		b.SetBytes(int64(len(content)))
		for b.Loop() {
			w := httptest.NewRecorder()
			if err := m.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("package_guard", func(b *testing.B) {
		b.SetBytes(int64(len(content)))
		for b.Loop() {
			w := httptest.NewRecorder()
			if err := g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil), m); err != nil || w.Code != 200 {
				b.Fatalf("status %d, %v", w.Code, err)
			}
		}
	})
}

func TestPackageGuardHandsUnreachableManagerToCaddy(t *testing.T) {
	pairs, err := packageSigners()
	if err != nil {
		t.Fatal(err)
	}
	g := &PackageGuard{UpstreamCerts: []string{writeCert(t, pairs[0])}}
	if err := provisionPackageGuard(t, g); err != nil {
		t.Fatal(err)
	}
	dialErr := caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp 127.0.0.1:1: connection refused"))
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return dialErr })
	before := testutil.ToFloat64(guardResults.WithLabelValues(pkgResultRefused, pkgReasonUpstream))
	w := httptest.NewRecorder()
	if err := g.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/epm/packages/EPS.msi", nil), next); !errors.Is(err, dialErr) {
		t.Fatalf("ServeHTTP returned %v, want the upstream error for Caddy to answer", err)
	}
	if w.Body.Len() != 0 || len(w.Header()) != 0 {
		t.Fatalf("the handler wrote %d bytes and headers %v itself", w.Body.Len(), w.Header())
	}
	if got := testutil.ToFloat64(guardResults.WithLabelValues(pkgResultRefused, pkgReasonUpstream)) - before; got != 1 {
		t.Fatalf("metric {refused,upstream_error} grew by %v, want 1", got)
	}
}
