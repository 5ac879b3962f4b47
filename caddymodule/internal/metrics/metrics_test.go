package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestRegisterSurvivesReloads(t *testing.T) {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "reload_test_total"})
	first := prometheus.NewPedanticRegistry()
	for range 2 {
		if got, err := Register(first, c); err != nil || got != c {
			t.Fatalf("registering on the same registry: %v, %v", got, err)
		}
	}
	c.Inc()
	other := prometheus.NewCounter(prometheus.CounterOpts{Name: "reload_test_total"})
	got, err := Register(first, other)
	if err != nil || got != c {
		t.Fatalf("an equal collector registered elsewhere was not reused: %v, %v", got, err)
	}
	if got, err := Register(prometheus.NewPedanticRegistry(), c); err != nil || testutil.ToFloat64(got) != 1 {
		t.Fatalf("the count did not carry over to the next configuration's registry: %v", err)
	}
	clash := prometheus.NewGauge(prometheus.GaugeOpts{Name: "reload_test_total", Help: "different"})
	if _, err := Register(first, clash); err == nil {
		t.Fatal("a conflicting collector was accepted")
	}
}
