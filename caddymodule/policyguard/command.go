package policyguard

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	guardlib "github.com/legacygate/legacygate/policyguard"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "policy",
		Usage: "keygen|sign|verify|resign ...",
		Short: "Creates signing keys, and signs, verifies and re-signs policy documents",
		Long: `
Works on policy documents (enveloped XML-DSig) offline, with the same code as
the policy_guard handler:

  keygen  --out DIR [--bits 2048|3072|4096] [--cn NAME]
          writes DIR/gateway.key and DIR/gateway.crt, the gateway's signing pair
  sign    --key FILE --cert FILE FILE|-
          signs a document (exclusive C14N, RSA-SHA256) and prints it
  verify  --cert FILE [--cert FILE...] [--allow-sha1] [--ignore-expiry] FILE|-
          verifies a manager-signed document against the pinned certificates
  resign  --upstream-cert FILE [--upstream-cert FILE...] --key FILE --cert FILE
          [--allow-sha1] [--ignore-expiry] FILE|-
          verifies, then prints the document signed with the gateway's key

FILE - reads standard input. Each command exits 0 on success and 1 with the
reason on standard error.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(policyKeygenCommand(), policySignCommand(), policyVerifyCommand(), policyResignCommand())
		},
	})
}

// policyInputLimit bounds what the commands read, like policy_guard's max_size.
const policyInputLimit = guardlib.DefaultMaxBytes

// policyRunE prints a failure as "legacygate policy NAME: reason" on
// standard error; Caddy's main then exits 1.
func policyRunE(run func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cmd.SilenceUsage = true
		err := run(cmd, args)
		if err != nil {
			cmd.SilenceErrors = true
			fmt.Fprintf(cmd.ErrOrStderr(), "legacygate policy %s: %v\n", cmd.Name(), err)
		}
		return err
	}
}

func policyKeygenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keygen --out DIR [--bits 2048|3072|4096] [--cn NAME]",
		Short: "Writes a new gateway signing key and self-signed certificate",
		Args:  cobra.NoArgs,
	}
	out := cmd.Flags().String("out", "", "Directory for gateway.key and gateway.crt (required)")
	bits := cmd.Flags().Int("bits", 2048, "RSA key size: 2048, 3072 or 4096")
	cn := cmd.Flags().String("cn", "legacygate policy signing", "Common name of the certificate")
	cmd.RunE = policyRunE(func(cmd *cobra.Command, _ []string) error {
		return policyKeygen(cmd.OutOrStdout(), *out, *bits, *cn)
	})
	return cmd
}

// policyKeygen writes DIR/gateway.key (0600) and DIR/gateway.crt, refusing
// to overwrite either.
func policyKeygen(w io.Writer, dir string, bits int, cn string) error {
	if dir == "" {
		return errors.New("--out DIR is required")
	}
	key, cert, err := guardlib.GenerateSigningKey(bits, cn)
	if err != nil {
		return err
	}
	keyPEM, certPEM, err := guardlib.EncodeKeyPair(key, cert)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	keyFile, certFile := filepath.Join(dir, "gateway.key"), filepath.Join(dir, "gateway.crt")
	if err := writeNewFile(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := writeNewFile(certFile, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(w, "key  %s\ncert %s\nsha256 %s\n", keyFile, certFile, guardlib.Fingerprint(cert))
	return nil
}

func writeNewFile(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("%w (refusing to overwrite)", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func policySignCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sign --key FILE --cert FILE FILE|-",
		Short: "Signs a policy document with the gateway's key",
		Args:  cobra.ExactArgs(1),
	}
	keyFile := cmd.Flags().String("key", "", "PEM private key (required)")
	certFile := cmd.Flags().String("cert", "", "PEM certificate of the key (required)")
	cmd.RunE = policyRunE(func(cmd *cobra.Command, args []string) error {
		signer, err := loadPolicySigner(*keyFile, *certFile)
		if err != nil {
			return err
		}
		doc, err := readPolicyInput(cmd.InOrStdin(), args[0])
		if err != nil {
			return err
		}
		root, err := guardlib.ParseDocument(doc, guardlib.VerifyOptions{})
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		out, err := signer.Sign(root)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	})
	return cmd
}

// verifyFlags are the verifier settings verify and resign share.
type verifyFlags struct {
	certs        *[]string
	allowSHA1    *bool
	ignoreExpiry *bool
}

func addVerifyFlags(cmd *cobra.Command, certFlag string) verifyFlags {
	return verifyFlags{
		certs:        cmd.Flags().StringArray(certFlag, nil, "Pinned manager certificate, PEM or DER (required, repeatable)"),
		allowSHA1:    cmd.Flags().Bool("allow-sha1", false, "Accept RSA-SHA1 signatures and SHA-1 digests"),
		ignoreExpiry: cmd.Flags().Bool("ignore-expiry", false, "Accept pinned certificates outside their validity dates"),
	}
}

func (f verifyFlags) verifier(certFlag string) (*guardlib.Verifier, error) {
	if len(*f.certs) == 0 {
		return nil, fmt.Errorf("--%s FILE is required", certFlag)
	}
	pinned, err := guardlib.LoadCertificates(*f.certs...)
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", certFlag, err)
	}
	v, err := guardlib.NewVerifier(pinned, guardlib.VerifyOptions{AllowSHA1: *f.allowSHA1, IgnoreExpiry: *f.ignoreExpiry})
	if err != nil {
		return nil, fmt.Errorf("--%s: %w", certFlag, err)
	}
	return v, nil
}

func policyVerifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify --cert FILE [--cert FILE...] [--allow-sha1] [--ignore-expiry] FILE|-",
		Short: "Verifies a manager-signed policy document against pinned certificates",
		Args:  cobra.ExactArgs(1),
	}
	flags := addVerifyFlags(cmd, "cert")
	cmd.RunE = policyRunE(func(cmd *cobra.Command, args []string) error {
		v, err := flags.verifier("cert")
		if err != nil {
			return err
		}
		doc, err := readPolicyInput(cmd.InOrStdin(), args[0])
		if err != nil {
			return err
		}
		got, err := v.Verify(doc)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "OK <%s> signed by %q (sha256 %s) with %s\n",
			got.Root.Tag, got.Cert.Subject.String(), guardlib.Fingerprint(got.Cert), got.SignatureMethod)
		return nil
	})
	return cmd
}

func policyResignCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "resign --upstream-cert FILE [--upstream-cert FILE...] --key FILE --cert FILE [--allow-sha1] [--ignore-expiry] FILE|-",
		Short: "Verifies a manager-signed document and prints it signed with the gateway's key",
		Args:  cobra.ExactArgs(1),
	}
	flags := addVerifyFlags(cmd, "upstream-cert")
	keyFile := cmd.Flags().String("key", "", "Gateway PEM private key (required)")
	certFile := cmd.Flags().String("cert", "", "Gateway PEM certificate (required)")
	cmd.RunE = policyRunE(func(cmd *cobra.Command, args []string) error {
		v, err := flags.verifier("upstream-cert")
		if err != nil {
			return err
		}
		signer, err := loadPolicySigner(*keyFile, *certFile)
		if err != nil {
			return err
		}
		doc, err := readPolicyInput(cmd.InOrStdin(), args[0])
		if err != nil {
			return err
		}
		out, err := guardlib.NewResigner(v, 0).Resign(doc, signer, nil)
		if err != nil {
			return fmt.Errorf("%s: %w", args[0], err)
		}
		_, err = cmd.OutOrStdout().Write(out)
		return err
	})
	return cmd
}

func loadPolicySigner(keyFile, certFile string) (*guardlib.Signer, error) {
	if keyFile == "" || certFile == "" {
		return nil, errors.New("--key FILE and --cert FILE are required")
	}
	return guardlib.LoadSigner(keyFile, certFile)
}

// readPolicyInput reads FILE, or standard input for "-", up to the limit.
func readPolicyInput(stdin io.Reader, name string) ([]byte, error) {
	r := stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	doc, err := io.ReadAll(io.LimitReader(r, policyInputLimit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if len(doc) > policyInputLimit {
		return nil, fmt.Errorf("%s: larger than %d bytes", name, policyInputLimit)
	}
	return doc, nil
}
