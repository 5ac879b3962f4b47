package main

import (
	"net"
	"slices"
	"testing"
)

func TestConfigAddressesReadsAdminAndEveryListener(t *testing.T) {
	for _, tc := range []struct {
		name      string
		json      string
		admin     string
		listeners []string
	}{
		{"no configuration", ``, "localhost:2019", nil},
		{"default admin", `{"apps":{"http":{"servers":{"a":{"listen":[":443"]},"b":{"listen":[":8014"]}}}}}`, "localhost:2019", []string{":443", ":8014"}},
		{"admin address", `{"admin":{"listen":"127.0.0.1:2999"}}`, "127.0.0.1:2999", nil},
		{"admin disabled", `{"admin":{"disabled":true}}`, "", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			admin, listeners, err := configAddresses([]byte(tc.json))
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(listeners)
			if admin != tc.admin || !slices.Equal(listeners, tc.listeners) {
				t.Errorf("got %q %q, want %q %q", admin, listeners, tc.admin, tc.listeners)
			}
		})
	}
	if _, _, err := configAddresses([]byte(`{"admin":`)); err == nil {
		t.Error("a truncated configuration was read")
	}
}

func TestAddressesInUseFindsOnlyBoundTCPAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	busy := ln.Addr().String()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	freeAddr := free.Addr().String()
	free.Close()

	for _, tc := range []struct {
		addr string
		want []string
	}{
		{busy, []string{busy}},
		{"tcp/" + busy, []string{busy}},
		{freeAddr, nil},
		{"unix//run/legacygate.sock", nil},
		{"udp/" + busy, nil},
		{"not an address", nil},
	} {
		if got := addressesInUse(tc.addr); !slices.Equal(got, tc.want) {
			t.Errorf("addressesInUse(%q) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}
