package manager

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// soapPost sends body with soapAction and returns the status and answer.
func soapPost(t *testing.T, url string, body []byte, soapAction string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	if soapAction != "" {
		req.Header.Set("SOAPAction", soapAction)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestPolicyServerAnswersAndRefusesReplay(t *testing.T) {
	m := startManager(t, Config{Flavor: "policyserver", HTTPSAddr: "", HTTPAddr: "127.0.0.1:0"})
	url := "http://" + m.Addrs().HTTP + PSPath
	msgID := NewMessageID()
	body, action := BuildPSRequest(PSRequest{Operation: "CheckIn", DeviceID: "DEV-1", MessageID: msgID, Payload: []byte{1, 2, 3}})

	status, answer := soapPost(t, url, body, action)
	if status != http.StatusOK {
		t.Fatalf("first request: status %d: %s", status, answer)
	}
	resp, err := ParsePSResponse(answer, "CheckIn")
	if err != nil {
		t.Fatalf("first answer: %v\n%s", err, answer)
	}
	if resp.MessageID != msgID || len(resp.Payload) != psPayloadLength {
		t.Fatalf("answer %+v does not echo the message id or carry a payload", resp)
	}

	status, answer = soapPost(t, url, body, action)
	if status != http.StatusInternalServerError {
		t.Fatalf("replayed request: status %d, want 500", status)
	}
	if _, err := ParsePSResponse(answer, "CheckIn"); err == nil || !strings.Contains(err.Error(), "replay") {
		t.Fatalf("replayed request: got %v, want a SOAP fault naming the replay", err)
	}
	if m.Requests(CountPSRequest) != 2 || m.Requests(CountPSAnswered) != 1 || m.Requests(CountPSReplay) != 1 {
		t.Fatalf("counts %v", m.RequestCounts())
	}
}

func TestPolicyServerRefusesMalformedRequests(t *testing.T) {
	m := startManager(t, Config{Flavor: "policyserver", HTTPSAddr: "", HTTPAddr: "127.0.0.1:0"})
	url := "http://" + m.Addrs().HTTP + PSPath
	good := func(op string) ([]byte, string) {
		return BuildPSRequest(PSRequest{Operation: op, DeviceID: "DEV-2", MessageID: NewMessageID(), Payload: []byte("x")})
	}
	checkIn, checkInAction := good("CheckIn")
	_, policyAction := good("GetPolicy")
	tests := []struct {
		name   string
		body   []byte
		action string
	}{
		{"not XML", []byte("hello"), checkInAction},
		{"SOAPAction of another operation", checkIn, policyAction},
		{"no SOAPAction", checkIn, ""},
		{"DOCTYPE", append([]byte(`<!DOCTYPE x [<!ENTITY a "b">]>`), checkIn[bytes.IndexByte(checkIn, '\n')+1:]...), checkInAction},
		{"no DeviceID", bytes.Replace(checkIn, []byte("DEV-2"), nil, 1), checkInAction},
		{"unknown operation", bytes.ReplaceAll(checkIn, []byte("CheckIn"), []byte("Shutdown")), `"` + PSNamespace + `/Shutdown"`},
		{"payload not base64", bytes.Replace(checkIn, []byte("<Payload>eA==</Payload>"), []byte("<Payload>!!</Payload>"), 1), checkInAction},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, answer := soapPost(t, url, tc.body, tc.action)
			if status != http.StatusBadRequest {
				t.Fatalf("status %d, want 400: %s", status, answer)
			}
			if _, err := ParsePSResponse(answer, "CheckIn"); err == nil || !strings.Contains(err.Error(), "SOAP fault") {
				t.Fatalf("answer is not a SOAP fault: %v", err)
			}
		})
	}
	if got := m.Requests(CountPSAnswered); got != 0 {
		t.Fatalf("%d malformed requests answered", got)
	}
}

func TestPolicyServerAbortCountsOneAttempt(t *testing.T) {
	m := startManager(t, Config{Flavor: "policyserver", HTTPSAddr: "", HTTPAddr: "127.0.0.1:0"})
	m.SetFault(Fault{Abort: true})
	body, action := BuildPSRequest(PSRequest{Operation: "CheckIn", DeviceID: "DEV-3", MessageID: NewMessageID()})
	req, err := http.NewRequest(http.MethodPost, "http://"+m.Addrs().HTTP+PSPath, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("SOAPAction", action)
	if resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("aborted request got status %d, want a dropped connection", resp.StatusCode)
	}
	if got := m.Requests(CountPSRequest); got != 1 {
		t.Fatalf("requests counted %d, want 1", got)
	}
}

func TestNonceSetIsBounded(t *testing.T) {
	s := newNonceSet(3)
	for _, id := range []string{"a", "b", "c", "d"} {
		if !s.add(id) {
			t.Fatalf("%s refused as a replay", id)
		}
	}
	if len(s.ids) != 3 {
		t.Fatalf("set holds %d ids, want 3", len(s.ids))
	}
	if s.add("d") {
		t.Fatal("recent id d accepted twice")
	}
	if !s.add("a") {
		t.Fatal("evicted id a still refused")
	}
}

func FuzzParsePSRequest(f *testing.F) {
	body, action := BuildPSRequest(PSRequest{Operation: "CheckIn", DeviceID: "DEV", MessageID: NewMessageID(), Payload: []byte("x")})
	f.Add(body, action)
	f.Add([]byte(`<soap:Envelope xmlns:soap="`+SOAPEnvNS+`"><soap:Body/></soap:Envelope>`), action)
	f.Fuzz(func(t *testing.T, body []byte, action string) {
		req, err := parsePSRequest(body, action)
		if err == nil && (req.DeviceID == "" || !validMessageID(req.MessageID)) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

func FuzzParsePSResponse(f *testing.F) {
	f.Add([]byte(`<soap:Envelope xmlns:soap="`+SOAPEnvNS+`"><soap:Body><CheckInResponse xmlns="`+PSNamespace+`"><MessageID>A</MessageID><PolicyVersion>1</PolicyVersion><Payload>eA==</Payload></CheckInResponse></soap:Body></soap:Envelope>`), "CheckIn")
	f.Add([]byte(`<soap:Envelope xmlns:soap="`+SOAPEnvNS+`"><soap:Body><soap:Fault><faultstring>x</faultstring></soap:Fault></soap:Body></soap:Envelope>`), "CheckIn")
	f.Fuzz(func(t *testing.T, body []byte, op string) {
		resp, err := ParsePSResponse(body, op)
		if err == nil && (resp.MessageID == "" || resp.PolicyVersion == "") {
			t.Fatalf("accepted %+v", resp)
		}
	})
}
