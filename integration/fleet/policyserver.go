package fleet

import (
	"crypto/rand"
	"fmt"
	"net/http"

	"github.com/legacygate/legacygate/integration/manager"
)

const (
	maxSOAPAnswerBytes = 1 << 20
	psPayloadBytes     = 64
)

// policyServerProtocol is the PolicyServer-style heartbeat of docs/protocol.md:
// a SOAP CheckIn naming the device, each message with a fresh single-use
// id; when the policy version changed, a GetPolicy. A CheckIn answered with
// anything but a valid SOAP answer echoing the message id counts as no
// answer (the next server is tried); a GetPolicy that fails that way leaves
// the client degraded.
type policyServerProtocol struct{}

func (policyServerProtocol) beat(f *Fleet, c *client, idx int32) result {
	return eachServer(c, idx, func(srv Server) (result, bool) { return f.policyServerServer(c, idx, srv) })
}

func (f *Fleet) policyServerServer(c *client, idx int32, srv Server) (result, bool) {
	device := fmt.Sprintf("DEV-%06d", idx)
	resp, answer := f.soap(c, srv, device, "CheckIn")
	f.count.indexLatency.observe(resp.took)
	switch {
	case resp.err != nil:
		return result{}, false
	case resp.limited():
		return result{outcome: outcomeLimited, retryAfter: resp.retryAfter}, true
	case !f.statusOK(resp):
		return result{}, false
	case answer == nil:
		f.count.fail(kindBadIndex)
		return result{}, false
	}
	if answer.PolicyVersion == c.profileSerial {
		return result{outcome: outcomeOK}, true
	}
	policy, policyAnswer := f.soap(c, srv, device, "GetPolicy")
	if r, ok := f.download(policy); !ok {
		return r, true
	}
	if policyAnswer == nil {
		f.count.fail(kindBadIndex)
		return result{outcome: outcomeDegraded}, true
	}
	c.profileSerial = f.intern(answer.PolicyVersion)
	f.count.profileUpdates.Add(1)
	return result{outcome: outcomeOK}, true
}

// soap sends one operation with a fresh message id and returns the
// response, and its decoded answer when it is a valid SOAP answer to this
// very message (nil otherwise).
func (f *Fleet) soap(c *client, srv Server, device, op string) (response, *manager.PSResponse) {
	payload := make([]byte, psPayloadBytes)
	rand.Read(payload)
	msgID := manager.NewMessageID()
	body, action := manager.BuildPSRequest(manager.PSRequest{Operation: op, DeviceID: device, MessageID: msgID, Payload: payload})
	header := http.Header{"Content-Type": {"text/xml; charset=utf-8"}, "Soapaction": {action}}
	resp := f.send(c, srv, http.MethodPost, manager.PSPath, header, body, maxSOAPAnswerBytes)
	if resp.err != nil || resp.status != http.StatusOK {
		return resp, nil
	}
	answer, err := manager.ParsePSResponse(resp.body, op)
	if err != nil || answer.MessageID != msgID || len(answer.PolicyVersion) > maxVersionLen {
		return resp, nil
	}
	return resp, &answer
}
