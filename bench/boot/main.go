// Command boot prints the boot timelines the VM tests recorded
// (qemu-tests/vm.Record JSON files) as a phase table, and the share of the
// boot spent in Palisade's own phases (init, attest, unlock, mesh) against
// the whole boot (firmware, transfer and kernel included), one RATIO line
// per boot.
//
//	go run ./bench/boot out/qemu-tests/timeline/*.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// record is qemu-tests/vm.Record as written to JSON (nothing may import
// qemu-tests, so the format is read here by its field names).
type record struct {
	Test   string        `json:"test"`
	Boot   string        `json:"boot"`
	Total  time.Duration `json:"total_ns"`
	Phases []struct {
		Name     string        `json:"name"`
		Ours     bool          `json:"ours"`
		Start    time.Duration `json:"start_ns"`
		Duration time.Duration `json:"duration_ns"`
	} `json:"phases"`
}

func (r record) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %9s %9s  %s\n", "phase", "start", "duration", "ours")
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "%-10s %8.2fs %8.2fs  %v\n", p.Name, p.Start.Seconds(), p.Duration.Seconds(), p.Ours)
	}
	return b.String()
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: boot TIMELINE.json…\nexample: go run ./bench/boot out/qemu-tests/timeline/*.json")
		os.Exit(2)
	}
	var recs []record
	for _, p := range os.Args[1:] {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "boot:", err)
			os.Exit(1)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(os.Stderr, "boot: %s: %v\n", p, err)
			os.Exit(1)
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Test < recs[j].Test })
	var ours, total time.Duration
	for _, r := range recs {
		fmt.Printf("== %s (%s boot), %.1f s to the last phase\n%s", r.Test, r.Boot, r.Total.Seconds(), r.table())
		var o time.Duration
		for _, p := range r.Phases {
			if p.Ours {
				o += p.Duration
			}
		}
		if r.Total > 0 {
			fmt.Printf("RATIO boot-own-share-%s palisade/whole-boot = %.2fx\n", r.Boot, float64(o)/float64(r.Total))
		}
		ours += o
		total += r.Total
	}
	if total > 0 && len(recs) > 1 {
		fmt.Printf("RATIO boot-own-share palisade/whole-boot = %.2fx\n", float64(ours)/float64(total))
	}
}
