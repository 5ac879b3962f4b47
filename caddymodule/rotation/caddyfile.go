package rotation

import (
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"

	"github.com/legacygate/legacygate/caddymodule/internal/caddyarg"
	"github.com/legacygate/legacygate/internal/rotationtable"
)

func parseAppOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("legacygate: the global option is given twice")
	}
	a := new(App)
	if err := a.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "legacygate", Value: caddyconfig.JSON(a, nil)}, nil
}

// UnmarshalCaddyfile sets up the app from the global option. Syntax:
//
//	legacygate {
//	    signing_key current <key_file> <cert_file> | generate [<name>]
//	    signing_key next    <key_file> <cert_file> | generate [<name>]
//	    client_id   <placeholder>
//	    heartbeat   [<path>] [<param>=<value>...]
//	    instance_id <name>
//	    storage     <module> [<args...>]
//	    rotation {
//	        window             <start> <end>
//	        confirm_heartbeats <n>
//	        grace              <duration>
//	        max_clients        <n>
//	        persist_interval   <duration>
//	        purge_age          <duration>
//	        hold_retry_after   <duration>
//	    }
//	}
//
// Times are RFC 3339 (2026-12-01T00:00:00Z); durations take Go units plus d
// for days (90d). client_id takes Caddyfile shorthands ({query.hostid});
// the id is ASCII upper-cased, and a request naming its query parameter
// twice has no id (see the ClientID field). heartbeat's parameter names and
// values match ignoring ASCII case.
// generate keeps the key in Caddy storage under the name (default: the role).
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch d.Val() {
		case "signing_key":
			err = a.unmarshalSigningKey(d)
		case "client_id":
			a.ClientID, err = caddyarg.One(d)
			a.ClientID = expandShorthands(a.ClientID)
		case "heartbeat":
			a.Heartbeat, err = unmarshalRequestSpec(d)
		case "instance_id":
			a.InstanceID, err = caddyarg.One(d)
		case "storage":
			err = a.unmarshalStorage(d)
		case "rotation":
			if a.Rotation != nil {
				return d.Err("legacygate: rotation: given twice; one rotation at a time")
			}
			a.Rotation = new(RotationConfig)
			err = a.Rotation.unmarshalCaddyfile(d)
		default:
			return d.Errf("legacygate: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (a *App) unmarshalSigningKey(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) < 2 || len(args) > 3 {
		return d.Err("legacygate: signing_key: want <current|next> <key_file> <cert_file>, or <current|next> generate [<name>]")
	}
	k := SigningKeyConfig{Role: args[0]}
	switch {
	case args[1] == "generate" && len(args) == 3:
		k.Generate = args[2]
	case args[1] == "generate":
		k.Generate = args[0]
	case len(args) == 3:
		k.KeyFile, k.CertFile = args[1], args[2]
	default:
		return d.Errf("legacygate: signing_key %s: want <key_file> <cert_file>, or generate [<name>]", args[0])
	}
	a.SigningKeys = append(a.SigningKeys, k)
	return nil
}

func (a *App) unmarshalStorage(d *caddyfile.Dispenser) error {
	if !d.NextArg() {
		return d.ArgErr()
	}
	name := d.Val()
	mod, err := caddyfile.UnmarshalModule(d, "caddy.storage."+name)
	if err != nil {
		return err
	}
	conv, ok := mod.(caddy.StorageConverter)
	if !ok {
		return d.Errf("legacygate: storage: module %q is not a storage", name)
	}
	a.StorageRaw = caddyconfig.JSONModuleObject(conv, "module", name, nil)
	return nil
}

func (r *RotationConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	windows := 0
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		field := d.Val()
		var err error
		switch field {
		case "window":
			windows++
			if windows > 1 {
				return d.Err("legacygate: rotation: window: given twice (overlapping windows); one window per rotation")
			}
			err = r.unmarshalWindow(d)
		case "confirm_heartbeats":
			r.ConfirmHeartbeats, err = caddyarg.Int(d, 1)
		case "max_clients":
			r.MaxClients, err = caddyarg.Int(d, 1)
		case "grace":
			err = caddyarg.Duration(d, &r.Grace)
		case "persist_interval":
			err = caddyarg.Duration(d, &r.PersistInterval)
		case "purge_age":
			err = caddyarg.Duration(d, &r.PurgeAge)
		case "hold_retry_after":
			err = caddyarg.Duration(d, &r.HoldRetryAfter)
		default:
			return d.Errf("legacygate: rotation: unknown subdirective %q", field)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (r *RotationConfig) unmarshalWindow(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	if len(args) != 2 {
		return d.Err("legacygate: rotation: window: want <start> <end> (RFC 3339 times)")
	}
	var times [2]time.Time
	for i, v := range args {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return d.Errf("legacygate: rotation: window: %q is not an RFC 3339 time such as 2026-12-01T00:00:00Z", v)
		}
		times[i] = t.UTC()
	}
	r.Window = rotationtable.Window{Start: times[0], End: times[1]}
	return nil
}

// unmarshalRequestSpec reads [<path>] [<param>=<value>...].
func unmarshalRequestSpec(d *caddyfile.Dispenser) (*RequestSpec, error) {
	field := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.Errf("%s: want [<path>] [<param>=<value>...]", field)
	}
	s := &RequestSpec{}
	for i, arg := range args {
		if i == 0 && strings.HasPrefix(arg, "/") {
			s.Path = arg
			continue
		}
		k, v, ok := strings.Cut(arg, "=")
		if !ok || k == "" {
			return nil, d.Errf("%s: %q is neither a path (first, starting with /) nor <param>=<value>", field, arg)
		}
		if s.Query == nil {
			s.Query = map[string]string{}
		}
		s.Query[k] = v
	}
	return s, nil
}

// expandShorthands turns Caddyfile placeholder shorthands ({query.hostid})
// into full placeholders, which the Caddyfile adapter does for site blocks
// but not for global options.
func expandShorthands(s string) string {
	seg := caddyfile.Segment{caddyfile.Token{Text: s}}
	httpcaddyfile.NewShorthandReplacer().ApplyToSegment(&seg)
	return seg[0].Text
}

// Interface guards.
var _ caddyfile.Unmarshaler = (*App)(nil)
