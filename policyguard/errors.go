package policyguard

import (
	"errors"
	"fmt"
)

// Reasons a payload fails verification. They are stable: metrics and logs
// use them as labels.
const (
	ReasonNoSignature        = "no_signature"
	ReasonMultipleSignatures = "multiple_signatures"
	ReasonMisplacedSignature = "misplaced_signature"
	ReasonSignatureShape     = "bad_signature_shape"
	ReasonBadReference       = "bad_reference"
	ReasonDuplicateID        = "duplicate_id"
	ReasonBadTransforms      = "bad_transforms"
	ReasonUnsupportedAlg     = "unsupported_algorithm"
	ReasonSHA1NotAllowed     = "sha1_not_allowed"
	ReasonObjectNotAllowed   = "object_not_allowed"
	ReasonRetrievalMethod    = "retrieval_method"
	ReasonUntrustedKey       = "untrusted_key"
	ReasonDigestMismatch     = "digest_mismatch"
	ReasonExpiredCert        = "expired_cert"
	ReasonDoctype            = "doctype"
	ReasonTooLarge           = "too_large"
	ReasonTooDeep            = "too_deep"
	ReasonTooManyElements    = "too_many_elements"
	ReasonMalformedXML       = "malformed_xml"
	ReasonMalformedCMS       = "malformed_cms"
)

// VerifyError is the error every verification failure returns.
type VerifyError struct {
	// Reason is a short stable token, one of the Reason constants.
	Reason string
	// Err says what exactly was wrong.
	Err error
}

func (e *VerifyError) Error() string {
	if e.Err == nil {
		return "policy verification failed: " + e.Reason
	}
	return fmt.Sprintf("policy verification failed: %s: %v", e.Reason, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// fail builds a *VerifyError with a formatted cause.
func fail(reason, format string, args ...any) *VerifyError {
	return &VerifyError{Reason: reason, Err: fmt.Errorf(format, args...)}
}

// Reason returns the Reason of the *VerifyError in err's chain, or "" if
// there is none: handy as a metrics label.
func Reason(err error) string {
	var ve *VerifyError
	if errors.As(err, &ve) {
		return ve.Reason
	}
	return ""
}
