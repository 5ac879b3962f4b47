package policyguard

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/beevik/etree"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/legacygate/legacygate/rewrite"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rewrite",
		Usage: "--config <rules.json> [--out <file>] <file>|-",
		Short: "Rewrites a communication-settings document offline, for inspection",
		Long: `
Applies the settings rewrite that the gateway applies while serving (server
addresses and ports moved to the gateway, HTTP-only servers dropped when
migrating off plaintext, the gateway's certificate embedded) to FILE, or to
standard input for "-", and writes the result to standard output or --out.

--config is a JSON file holding the rewrite rules, for example:

  {
    "addresses": ["gw.example.com"],
    "https_port": 443,
    "drop_http_only": true,
    "certificate_file": "/etc/legacygate/2026.crt"
  }

Element and attribute names default to the SyLink server list
(server_element "Server", address_attr "Address", https_port_attr
"HttpsPort", http_port_attr "HttpPort", certificate_element
"ServerCertificate"); every one can be set. certificate_file is a PEM
certificate: the gateway signing certificate clients should trust next.

An enveloped ds:Signature on the root (the manager's) is removed and the
output is unsigned: the gateway signs what it serves. The input is not
verified; use "legacygate policy verify" for that.

Exits 0 on success, with a summary of the changes on standard error, and 1
with the reason on standard error otherwise; --out is written only on
success.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Args = cobra.ExactArgs(1)
			cmd.Flags().String("config", "", "JSON file with the rewrite rules (required)")
			cmd.Flags().String("out", "", "Write the result here instead of standard output")
			cmd.RunE = func(cmd *cobra.Command, args []string) error {
				cmd.SilenceUsage = true
				config, _ := cmd.Flags().GetString("config")
				out, _ := cmd.Flags().GetString("out")
				err := runRewrite(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), config, out, args[0])
				if err != nil {
					cmd.SilenceErrors = true
					fmt.Fprintf(cmd.ErrOrStderr(), "legacygate rewrite: %v\n", err)
				}
				return err
			}
		},
	})
}

// rewriteInputLimit bounds the document the command reads.
const rewriteInputLimit = 16 << 20

// rewriteConfig is the --config file: the rules, plus the certificate as a
// PEM file instead of inline DER.
type rewriteConfig struct {
	rewrite.Rules
	CertificateFile string `json:"certificate_file,omitempty"`
}

// loadRewriteRules reads and checks a --config file.
func loadRewriteRules(path string) (rewrite.Rules, error) {
	if path == "" {
		return rewrite.Rules{}, errors.New("--config is required: a JSON file with the rewrite rules")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return rewrite.Rules{}, fmt.Errorf("reading config: %w", err)
	}
	var cfg rewriteConfig
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return rewrite.Rules{}, fmt.Errorf("config %s: %w", path, err)
	}
	if dec.More() {
		return rewrite.Rules{}, fmt.Errorf("config %s: more than one JSON value", path)
	}
	if cfg.CertificateFile != "" {
		if len(cfg.Certificate) > 0 {
			return rewrite.Rules{}, fmt.Errorf("config %s: give certificate or certificate_file, not both", path)
		}
		if cfg.Certificate, err = readPEMCertificate(cfg.CertificateFile); err != nil {
			return rewrite.Rules{}, fmt.Errorf("config %s: certificate_file: %w", path, err)
		}
	}
	if err := cfg.Rules.Validate(); err != nil {
		return rewrite.Rules{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg.Rules, nil
}

// readPEMCertificate returns the DER of the first CERTIFICATE block in path.
func readPEMCertificate(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s holds no PEM CERTIFICATE block", path)
		}
		if block.Type == "CERTIFICATE" {
			return block.Bytes, nil
		}
	}
}

// runRewrite is the command: it changes nothing on failure.
func runRewrite(stdin io.Reader, stdout, stderr io.Writer, configPath, outPath, input string) error {
	rules, err := loadRewriteRules(configPath)
	if err != nil {
		return err
	}
	data, err := readRewriteInput(stdin, input)
	if err != nil {
		return err
	}
	doc := etree.NewDocument()
	if err := doc.ReadFromBytes(data); err != nil {
		return fmt.Errorf("%s: malformed XML: %w", inputName(input), err)
	}
	if doc.Root() == nil {
		return fmt.Errorf("%s: no root element", inputName(input))
	}
	removed := removeEnvelopedSignatures(doc.Root())
	t, err := rewrite.NewTransform(rules)
	if err != nil {
		return err
	}
	res, err := rewrite.Apply(doc.Root(), t.Rules())
	if err != nil {
		return fmt.Errorf("%s: %w", inputName(input), err)
	}
	var out bytes.Buffer
	if _, err := doc.WriteTo(&out); err != nil {
		return fmt.Errorf("serializing the result: %w", err)
	}
	if outPath == "" {
		if _, err := stdout.Write(out.Bytes()); err != nil {
			return fmt.Errorf("writing the result: %w", err)
		}
	} else if err := os.WriteFile(outPath, out.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing the result: %w", err)
	}
	if removed > 0 {
		fmt.Fprintf(stderr, "removed the manager's ds:Signature: the output is unsigned (the gateway signs what it serves)\n")
	}
	fmt.Fprintf(stderr, "servers: %d found, %d rewritten, %d added, %d merged, %d dropped; blocks removed: %d; certificates written: %d; protocol switches set to HTTPS: %d\ntransform id: %s\n",
		res.Servers, res.Rewritten, res.Added, res.Merged, res.Dropped, res.BlocksRemoved, res.Certificates, res.ProtocolSwitched, t.ID())
	return nil
}

func inputName(input string) string {
	if input == "-" {
		return "standard input"
	}
	return input
}

func readRewriteInput(stdin io.Reader, input string) ([]byte, error) {
	r := stdin
	if input != "-" {
		f, err := os.Open(input)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, rewriteInputLimit+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", inputName(input), err)
	}
	if len(data) > rewriteInputLimit {
		return nil, fmt.Errorf("%s: larger than %d bytes", inputName(input), rewriteInputLimit)
	}
	return data, nil
}

// removeEnvelopedSignatures removes ds:Signature children of root, which is
// where a manager's enveloped signature sits.
func removeEnvelopedSignatures(root *etree.Element) int {
	n := 0
	for _, c := range root.ChildElements() {
		if c.Tag != "Signature" || c.NamespaceURI() != "http://www.w3.org/2000/09/xmldsig#" {
			continue
		}
		i := c.Index()
		root.RemoveChildAt(i)
		if i > 0 {
			if cd, ok := root.Child[i-1].(*etree.CharData); ok && strings.TrimSpace(cd.Data) == "" {
				root.RemoveChildAt(i - 1)
			}
		}
		n++
	}
	return n
}
