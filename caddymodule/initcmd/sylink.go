package initcmd

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
)

// maxSyLinkSize bounds the SyLink file read: real ones are a few KB.
const maxSyLinkSize = 4 << 20

// maxSyLinkCerts bounds the distinct certificates taken from one file.
const maxSyLinkCerts = 16

// SyLinkInfo is what init takes from a SyLink.xml (a SEPM client's
// communication settings): the signing certificates clients trust, and
// whether the file itself is signed with SHA-1.
type SyLinkInfo struct {
	// Certs are the distinct <ServerCertificate> certificates, in the
	// order they first appear.
	Certs []*x509.Certificate
	// SHA1Signature: a <SignatureMethod> or <DigestMethod> names SHA-1.
	SHA1Signature bool
}

// ParseSyLink reads the <ServerCertificate> elements (base64 DER, in any
// namespace) and the signature algorithms of a SyLink.xml. It fails when
// the file is not well-formed XML or holds no certificate.
func ParseSyLink(data []byte) (*SyLinkInfo, error) {
	if len(data) > maxSyLinkSize {
		return nil, fmt.Errorf("SyLink: %d bytes, more than the %d a settings file has", len(data), maxSyLinkSize)
	}
	info := &SyLinkInfo{}
	dec := xml.NewDecoder(bytes.NewReader(data))
	var inCert bool
	var text strings.Builder
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("SyLink: not well-formed XML: %w", err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "ServerCertificate":
				inCert = true
				text.Reset()
			case "SignatureMethod", "DigestMethod":
				for _, a := range t.Attr {
					if a.Name.Local == "Algorithm" && strings.Contains(strings.ToLower(a.Value), "sha1") {
						info.SHA1Signature = true
					}
				}
			}
		case xml.CharData:
			if inCert && text.Len() < maxSyLinkSize {
				text.Write(t)
			}
		case xml.EndElement:
			if t.Name.Local != "ServerCertificate" || !inCert {
				continue
			}
			inCert = false
			c, err := parseServerCertificate(text.String())
			if err != nil {
				return nil, fmt.Errorf("SyLink: <ServerCertificate> %d: %w", len(info.Certs)+1, err)
			}
			if !slices.ContainsFunc(info.Certs, c.Equal) {
				if len(info.Certs) == maxSyLinkCerts {
					return nil, fmt.Errorf("SyLink: more than %d distinct <ServerCertificate>s", maxSyLinkCerts)
				}
				info.Certs = append(info.Certs, c)
			}
		}
	}
	if len(info.Certs) == 0 {
		return nil, errors.New("SyLink: no <ServerCertificate>: export the settings from the manager's console (Clients > Export communication settings)")
	}
	return info, nil
}

func parseServerCertificate(text string) (*x509.Certificate, error) {
	clean := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, text)
	der, err := base64.StdEncoding.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("not base64: %w", err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("not a DER certificate: %w", err)
	}
	return c, nil
}
