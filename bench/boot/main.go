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
	"time"

	"github.com/palisade-cc/palisade/qemu-tests/vm"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: boot TIMELINE.json…\nexample: go run ./bench/boot out/qemu-tests/timeline/*.json")
		os.Exit(2)
	}
	var recs []vm.Record
	for _, p := range os.Args[1:] {
		b, err := os.ReadFile(p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "boot:", err)
			os.Exit(1)
		}
		var r vm.Record
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(os.Stderr, "boot: %s: %v\n", p, err)
			os.Exit(1)
		}
		recs = append(recs, r)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Test < recs[j].Test })
	var ours, total time.Duration
	for _, r := range recs {
		fmt.Printf("== %s (%s boot), %.1f s to the last phase\n%s", r.Test, r.Boot, r.Total.Seconds(), r.String())
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
