package rotation

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rotation",
		Usage: "status [--address <admin>] [--json] [--page N] [--size M]",
		Short: "Shows the progress of the signing key rotation",
		Long: `
status asks a running gateway's admin endpoint (GET /legacygate/rotation)
for the rotation's progress and prints the window, the clients by state, a
progress bar of confirmed clients, the clients still on plaintext, and a page
of stragglers (unconfirmed clients, longest silent first), then the
signing keys (subject, expiry, pin, fingerprint). Without a rotation window,
or without the legacygate global option, it prints "no rotation configured",
the signing keys and the plaintext clients (when counted) and exits 0.

--address is the admin endpoint (default localhost:2019); --json prints the
admin API's JSON as it came; --page and --size choose the stragglers' page
(size 1 to 1000, default 50). Exits 1 with the reason when the gateway
cannot be asked.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(rotationStatusCommand())
		},
	})
}

func rotationStatusCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "status [--address <admin>] [--json] [--page N] [--size M]",
		Short: "Prints the rotation's progress as a table with a progress bar",
		Args:  cobra.NoArgs,
	}
	c.Flags().String("address", "", "The admin endpoint of the gateway (default localhost:2019)")
	c.Flags().Bool("json", false, "Print the admin API's JSON instead of a table")
	c.Flags().Int("page", 1, "Page of stragglers")
	c.Flags().Int("size", defaultStragglerPage, "Stragglers per page (1 to 1000)")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		cmd.SilenceUsage = true
		address, _ := cmd.Flags().GetString("address")
		asJSON, _ := cmd.Flags().GetBool("json")
		page, _ := cmd.Flags().GetInt("page")
		size, _ := cmd.Flags().GetInt("size")
		err := runRotationStatus(cmd.OutOrStdout(), address, asJSON, page, size)
		if err != nil {
			cmd.SilenceErrors = true
			fmt.Fprintf(cmd.ErrOrStderr(), "legacygate rotation status: %v\n", err)
		}
		return err
	}
	return c
}

// rotationResponseLimit bounds what the command reads from the admin API.
const rotationResponseLimit = 16 << 20

func runRotationStatus(out io.Writer, address string, asJSON bool, page, size int) error {
	if page < 1 {
		return fmt.Errorf("--page %d: pages count from 1", page)
	}
	if size < 1 || size > maxStragglerPage {
		return fmt.Errorf("--size %d: want 1 to %d", size, maxStragglerPage)
	}
	addr, err := caddycmd.DetermineAdminAPIAddress(address, nil, "", "")
	if err != nil {
		return err
	}
	q := url.Values{"page": {strconv.Itoa(page)}, "size": {strconv.Itoa(size)}}
	resp, err := caddycmd.AdminAPIRequest(addr, "GET", "/legacygate/rotation?"+q.Encode(), nil, nil)
	if err != nil {
		return fmt.Errorf("asking %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, rotationResponseLimit))
	if err != nil {
		return fmt.Errorf("reading the answer of %s: %w", addr, err)
	}
	if asJSON {
		_, err = out.Write(body)
		return err
	}
	var st RotationStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("the answer of %s is not rotation status JSON: %w", addr, err)
	}
	return formatRotationStatus(out, st)
}

// progressBarWidth is the number of cells in the progress bar.
const progressBarWidth = 40

// formatRotationStatus prints the status for a terminal.
func formatRotationStatus(out io.Writer, st RotationStatus) error {
	var b bytes.Buffer
	if !st.Rotation {
		formatNoRotation(&b, st)
		_, err := out.Write(b.Bytes())
		return err
	}
	c := st.Counts
	fmt.Fprintf(&b, "Window    %s to %s (phase %s; grace %s, until %s)\n",
		st.Window.Start.Format(time.RFC3339), st.Window.End.Format(time.RFC3339), c.Phase, st.Grace, st.GraceEnds.Format(time.RFC3339))
	fmt.Fprintf(&b, "Keys      current %s, next %s; %d heartbeats after the anchor fetch confirm a client\n",
		st.Keys[roleCurrent], st.Keys[roleNext], st.ConfirmHeartbeats)
	fmt.Fprintf(&b, "Progress  %s %5.1f%% confirmed (%d of %d)\n\n",
		progressBar(st.ConfirmedPercent, progressBarWidth), st.ConfirmedPercent, c.Confirmed, c.Tracked)

	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "STATE\tCLIENTS\t")
	for _, row := range []struct {
		name string
		n    int
	}{{"unseen", c.Unseen}, {"pending", c.Pending}, {"anchor_fetched", c.AnchorFetched}, {"confirmed", c.Confirmed}, {"tracked", c.Tracked}, {"on plaintext", c.Plaintext}} {
		fmt.Fprintf(tw, "%s\t%d\t\n", row.name, row.n)
	}
	fmt.Fprintf(tw, "evicted\t%d\t\nrefused (table full)\t%d\t\n", c.Evicted, c.Refused)
	if err := tw.Flush(); err != nil {
		return err
	}
	formatStragglers(&b, st.Stragglers)
	formatKept(&b, st.NeedsAgentUpgrade)
	formatKeys(&b, st.SigningKeys)
	_, err := out.Write(b.Bytes())
	return err
}

// formatNoRotation says which keys sign and that nothing rotates.
func formatNoRotation(b *bytes.Buffer, st RotationStatus) {
	switch {
	case st.App:
		b.WriteString("no rotation configured: every payload is signed with the legacygate app's current key\n")
	default:
		b.WriteString("no rotation configured: no legacygate global option; each policy_guard signs with its own signing_key\n")
	}
	if st.PlaintextClients != nil {
		fmt.Fprintf(b, "Plaintext clients  %d\n", *st.PlaintextClients)
	} else {
		b.WriteString("Plaintext clients  not tracked (the legacygate app counts them during a rotation window)\n")
	}
	formatKept(b, st.NeedsAgentUpgrade)
	formatKeys(b, st.SigningKeys)
}

// formatKeys lists the signing keys with what an operator compares them
// with: the certificate's subject and expiry, its pin and fingerprint.
func formatKeys(b *bytes.Buffer, keys []SigningKeyInfo) {
	if len(keys) == 0 {
		b.WriteString("\nSigning keys: none reported.\n")
		return
	}
	b.WriteString("\nSigning keys:\n")
	for _, k := range keys {
		fmt.Fprintf(b, "  %-12s key id %s, subject %q, expires %s\n", k.Role, k.KeyID, printable(k.Subject), k.NotAfter.Format(time.RFC3339))
		fmt.Fprintf(b, "  %-12s pin %s, sha256 fingerprint %s\n", "", k.Pin, k.Fingerprint)
	}
}

func formatStragglers(b *bytes.Buffer, s *StragglerPage) {
	if s == nil || s.Total == 0 {
		b.WriteString("\nNo stragglers: every tracked client has confirmed.\n")
		return
	}
	pages := (s.Total + s.Size - 1) / s.Size
	fmt.Fprintf(b, "\nStragglers, longest silent first (page %d of %d, %d in all):\n", s.Page, pages, s.Total)
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tPROGRESS\tLAST SEEN\tANCHOR FETCHED\tHEARTBEATS\tPLAINTEXT")
	for _, c := range s.Clients {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", printable(c.Client), c.Progress, c.LastSeen.Format(time.RFC3339),
			timeOrDash(c.AnchorFetched), c.HeartbeatsSince, yesNo(c.SeenPlaintext))
	}
	_ = tw.Flush()
}

// formatKept lists the clients kept on plain HTTP by plaintext_bridge.
func formatKept(b *bytes.Buffer, kept []KeptClient) {
	if len(kept) == 0 {
		return
	}
	fmt.Fprintf(b, "\nKept on plain HTTP, needs agent upgrade (%d):\n", len(kept))
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CLIENT\tPROGRESS\tLAST SEEN\tNOTE")
	for _, k := range kept {
		progress, seen := "not seen", "-"
		if k.Seen {
			progress, seen = string(k.Progress), k.LastSeen.Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\tneeds agent upgrade\n", printable(k.Client), progress, seen)
	}
	_ = tw.Flush()
}

// progressBar draws percent (0 to 100) as width cells.
func progressBar(percent float64, width int) string {
	filled := int(min(max(percent, 0), 100) / 100 * float64(width))
	return "[" + strings.Repeat("#", filled) + strings.Repeat(".", width-filled) + "]"
}

func timeOrDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

func yesNo(v bool) string {
	if v {
		return "yes"
	}
	return "no"
}

// printable keeps a client-chosen label from driving the terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}
