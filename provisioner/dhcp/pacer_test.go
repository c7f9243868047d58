package dhcp

import (
	"testing"
	"time"
)

func TestReleaseAt(t *testing.T) {
	t0 := time.Unix(1000, 0)
	committed := t0.Add(50 * time.Millisecond)
	for _, tc := range []struct {
		arrived time.Duration
		want    time.Duration
	}{
		{0, 50 * time.Millisecond},                               // first of the batch: at commit
		{3 * time.Millisecond, 53 * time.Millisecond},            // keeps its offset
		{40 * time.Millisecond, 50*time.Millisecond + maxSpread}, // capped
		{-time.Millisecond, 50 * time.Millisecond},               // never before the commit
	} {
		if got := releaseAt(t0.Add(tc.arrived), t0, committed).Sub(t0); got != tc.want {
			t.Errorf("arrived +%v: release +%v, want +%v", tc.arrived, got, tc.want)
		}
	}
}
