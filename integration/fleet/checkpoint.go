package fleet

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/smallstep/pkcs7"

	"github.com/legacygate/legacygate/integration/manager"
)

// Check Point-style limits.
const (
	maxHeartbeatBytes = 64 << 10
	maxPackageBytes   = 256 << 20
	maxP7SBytes       = 1 << 20
	maxVersionLen     = 256
)

// checkpointProtocol is the Check Point-style heartbeat of docs/protocol.md: POST
// the heartbeat with the endpoint's id; when the policy version changed,
// download a policy blob and the client package, and install the package
// only if its detached CMS signature verifies against the certificate the
// client trusts for the server.
type checkpointProtocol struct{}

func (checkpointProtocol) beat(f *Fleet, c *client, idx int32) result {
	return eachServer(c, idx, func(srv Server) (result, bool) { return f.checkpointServer(c, idx, srv) })
}

// eachServer tries the servers in priority order, starting each block at a
// different server per client, until one answers.
func eachServer(c *client, idx int32, try func(Server) (result, bool)) result {
	for _, b := range c.settings.Blocks {
		n := len(b.Servers)
		for k := range n {
			if r, answered := try(b.Servers[(int(idx)+k)%n]); answered {
				return r
			}
		}
	}
	return result{outcome: outcomeUnusable, accelerate: true}
}

func (f *Fleet) checkpointServer(c *client, idx int32, srv Server) (result, bool) {
	header := http.Header{manager.CPEndpointHeader: {fmt.Sprintf("EP-%06d", idx)}, "Content-Type": {"text/plain"}}
	resp := f.send(c, srv, http.MethodPost, manager.CPHeartbeatPath, header, []byte("status=ok"), maxHeartbeatBytes)
	f.count.indexLatency.observe(resp.took)
	switch {
	case resp.err != nil:
		return result{}, false
	case resp.limited():
		return result{outcome: outcomeLimited, retryAfter: resp.retryAfter}, true
	case !f.statusOK(resp):
		return result{}, false
	}
	var hb manager.CPHeartbeat
	if err := json.Unmarshal(resp.body, &hb); err != nil || hb.PolicyVersion == "" || len(hb.PolicyVersion) > maxVersionLen {
		f.count.fail(kindBadIndex)
		return result{}, false
	}
	if hb.PolicyVersion == c.profileSerial {
		return result{outcome: outcomeOK}, true
	}
	if r, ok := f.download(f.send(c, srv, http.MethodGet, manager.CPPolicyPrefix+manager.CPBlades[0], nil, nil, maxProfileBytes)); !ok {
		return r, true
	}
	if r := f.fetchPackage(c, srv, manager.CPPackagePrefix+manager.CPPackages[0]); r.outcome != outcomeOK {
		return r, true
	}
	c.profileSerial = f.intern(hb.PolicyVersion)
	f.count.profileUpdates.Add(1)
	return result{outcome: outcomeOK}, true
}

// fetchPackage downloads a package and its .p7s and verifies them.
func (f *Fleet) fetchPackage(c *client, srv Server, path string) result {
	pkg := f.send(c, srv, http.MethodGet, path, nil, nil, maxPackageBytes)
	if r, ok := f.download(pkg); !ok {
		return r
	}
	sig := f.send(c, srv, http.MethodGet, path+manager.CPSignatureSuffix, nil, nil, maxP7SBytes)
	if r, ok := f.download(sig); !ok {
		return r
	}
	if srv.VerifySignatures {
		if err := verifyPackage(pkg.body, sig.body, srv.Cert); err != nil {
			return f.refused()
		}
	}
	return result{outcome: outcomeOK}
}

var errPackageSigner = errors.New("package signed by a certificate the client does not trust")

// verifyPackage checks a CMS detached signature over content by the key of
// trusted (the client's own check, independent of the gateway's).
func verifyPackage(content, p7s []byte, trusted *x509.Certificate) error {
	p7, err := pkcs7.Parse(p7s)
	if err != nil {
		return fmt.Errorf("package signature: %w", err)
	}
	signer := p7.GetOnlySigner()
	if signer == nil || len(p7.Content) != 0 {
		return errors.New("package signature: want one signer and detached content")
	}
	if !bytes.Equal(signer.RawSubjectPublicKeyInfo, trusted.RawSubjectPublicKeyInfo) {
		return errPackageSigner
	}
	p7.Content = content
	if err := p7.Verify(); err != nil {
		return fmt.Errorf("package signature: %w", err)
	}
	return nil
}

// send is do for the flavors whose requests carry their own headers and
// no query: one request to srv, at most limit bytes of answer read.
func (f *Fleet) send(c *client, srv Server, method, path string, header http.Header, body []byte, limit int64) response {
	ctx, cancel := context.WithTimeout(context.Background(), f.cfg.Timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	began := time.Now()
	req, err := http.NewRequestWithContext(ctx, method, srv.BaseURL()+path, rd)
	if err != nil {
		f.count.fail(kindConnect)
		return response{err: fmt.Errorf("building request to %s: %w", srv.BaseURL(), err)}
	}
	for k, v := range header {
		req.Header[k] = v
	}
	f.count.requests.Add(1)
	hr, err := f.http.get(c.tls10, srv.VerifyCA).Do(req)
	if err != nil {
		f.count.fail(classify(err))
		return response{err: err, took: time.Since(began)}
	}
	defer hr.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hr.Body, limit+1))
	r := response{status: hr.StatusCode, body: data, retryAfter: parseRetryAfter(hr.Header.Get("Retry-After")), took: time.Since(began)}
	switch {
	case err != nil:
		f.count.fail(classify(err))
		r.err = err
	case int64(len(data)) > limit:
		f.count.fail(kindOversize)
		r.err = fmt.Errorf("%s%s answered more than %d bytes", srv.BaseURL(), path, limit)
	case r.limited():
		f.count.rateLimited.Add(1)
	}
	return r
}
