package policyguard

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/beevik/etree"
)

// renameServer is a test transform that rewrites an attribute.
type renameServer struct{ to string }

func (r renameServer) ID() string { return "rename:" + r.to }

func (r renameServer) Apply(root *etree.Element) error {
	el := root.FindElement("//ScanSetting")
	if el == nil {
		return errors.New("no ScanSetting")
	}
	el.CreateAttr("Value", r.to)
	return nil
}

func TestResignOutputCarriesOnlyTheGatewaySignature(t *testing.T) {
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	out, err := r.Resign(managerSign(t, testParty(t, "manager"), sepmProfile(4<<10), managerSignOptions{}), testParty(t, "gateway").signer(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := newTestVerifier(t, VerifyOptions{}, "gateway").Verify(out)
	if err != nil {
		t.Fatalf("resigned output: %v", err)
	}
	if bytes.Contains(out, []byte(base64Cert(testParty(t, "manager")))) {
		t.Fatal("output still carries the manager's certificate")
	}
	if got.Root.Tag != "Profile" {
		t.Fatalf("root <%s>", got.Root.Tag)
	}
}

func TestResignAppliesTransformBeforeSigning(t *testing.T) {
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	out, err := r.Resign(doc, testParty(t, "gateway").signer(t), renameServer{to: "https://gw.example"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := newTestVerifier(t, VerifyOptions{}, "gateway").Verify(out)
	if err != nil {
		t.Fatal(err)
	}
	if v := got.Root.FindElement("//ScanSetting").SelectAttrValue("Value", ""); v != "https://gw.example" {
		t.Fatalf("transformed value %q not signed", v)
	}
}

func TestResignCommentInjectionOutputCarriesCanonicalText(t *testing.T) {
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	injected := bytes.Replace(doc, []byte("policy 1 for"), []byte("policy 1<!-- injected --> for"), 1)
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	out, err := r.Resign(injected, testParty(t, "gateway").signer(t), nil)
	if err != nil {
		t.Fatalf("comments are outside exclusive C14N's signed content, so this verifies: %v", err)
	}
	if bytes.Contains(out, []byte("<!--")) || !bytes.Contains(out, []byte("policy 1 for &lt;default&gt; group")) {
		t.Fatalf("output must carry the signed canonical text without the comment:\n%.600s", out)
	}
}

func TestResignCachesAndCoalescesIdenticalMisses(t *testing.T) {
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(20<<10), managerSignOptions{})
	gw := testParty(t, "gateway").signer(t)
	const callers = 16
	outs := make([][]byte, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			out, err := r.Resign(doc, gw, nil)
			if err != nil {
				t.Error(err)
			}
			outs[i] = out
		})
	}
	wg.Wait()
	for i := range outs {
		if !bytes.Equal(outs[i], outs[0]) {
			t.Fatalf("caller %d got different output", i)
		}
	}
	st := r.Stats()
	if st.Misses != 1 || st.Hits+st.Coalesced != callers-1 || st.Entries != 1 {
		t.Fatalf("stats %+v: want 1 miss, the rest hits or coalesced, 1 entry", st)
	}
}

func TestResignCacheKeyIncludesKeyAndTransform(t *testing.T) {
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	gw, next := testParty(t, "gateway").signer(t), testParty(t, "manager-next").signer(t)
	for _, call := range []struct {
		s *Signer
		t Transform
	}{{gw, nil}, {next, nil}, {gw, renameServer{"a"}}, {gw, renameServer{"b"}}, {gw, nil}} {
		if _, err := r.Resign(doc, call.s, call.t); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); st.Misses != 4 || st.Hits != 1 {
		t.Fatalf("stats %+v: want 4 misses (key, transform differ) and 1 hit", st)
	}
}

func TestResignCacheEvictsLeastRecentlyUsedWithinBytes(t *testing.T) {
	gw := testParty(t, "gateway").signer(t)
	var docs [][]byte
	for i := range 3 {
		docs = append(docs, managerSign(t, testParty(t, "manager"), strings.Replace(sepmProfile(4<<10), "8F1C2A", fmt.Sprint(i), 1), managerSignOptions{}))
	}
	probe := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	one, err := probe.Resign(docs[0], gw, nil)
	if err != nil {
		t.Fatal(err)
	}
	budget := int64(2*len(one) + 400) // room for two entries, not three
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), budget)
	for _, d := range docs {
		if _, err := r.Resign(d, gw, nil); err != nil {
			t.Fatal(err)
		}
	}
	st := r.Stats()
	if st.Entries != 2 || st.Bytes > budget {
		t.Fatalf("stats %+v: want 2 entries within %d bytes", st, budget)
	}
	if _, err := r.Resign(docs[0], gw, nil); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Misses != 4 {
		t.Fatalf("stats %+v: the oldest entry should have been evicted", st)
	}
}

func TestResignNeverCachesOrReturnsUnverifiedPayload(t *testing.T) {
	r := NewResigner(newTestVerifier(t, VerifyOptions{}, "manager"), 1<<20)
	doc := managerSign(t, testParty(t, "manager"), sepmProfile(1<<10), managerSignOptions{})
	tampered := bytes.Replace(doc, []byte(`Name="group-0"`), []byte(`Name="evil"`), 1)
	for range 2 {
		out, err := r.Resign(tampered, testParty(t, "gateway").signer(t), nil)
		if Reason(err) != ReasonDigestMismatch || out != nil {
			t.Fatalf("got %d bytes, %v; want nothing and %s", len(out), err, ReasonDigestMismatch)
		}
	}
	if st := r.Stats(); st.Entries != 0 || st.Misses != 2 {
		t.Fatalf("stats %+v: failures must not be cached", st)
	}
}
