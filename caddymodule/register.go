package caddymodule

// Modules that live in their own packages, linked into every binary that
// imports caddymodule.
import _ "github.com/legacygate/legacygate/caddymodule/managerrequest"
