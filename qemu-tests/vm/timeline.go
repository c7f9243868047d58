package vm

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Phase is one stretch of a boot: from the end of the previous phase to the
// console line that ends this one.
type Phase struct {
	Name string `json:"name"`
	// Ours is true for Palisade's own code (init, attestd, unlock, mesh),
	// false for firmware, network transfer and kernel.
	Ours     bool          `json:"ours"`
	Start    time.Duration `json:"start_ns"`
	Duration time.Duration `json:"duration_ns"`
	// Marker is the console line that ended the phase.
	Marker string `json:"marker"`
}

// phaseEnds are the console lines that end each phase, in boot order. A
// phase whose marker never appears (no disk, no mesh yet) is left out.
var phaseEnds = []struct {
	name string
	ours bool
	re   *regexp.Regexp
}{
	// OVMF's boot manager starts the network boot (or, for QEMU direct
	// boot, the kernel's EFI stub runs).
	{"firmware", false, regexp.MustCompile(`>>Start (PXE|HTTP Boot) over IPv4|^EFI stub:`)},
	// The UKI arrived and systemd-stub hands over to the kernel's stub.
	{"transfer", false, regexp.MustCompile(`^EFI stub:`)},
	{"kernel", false, regexp.MustCompile(`Run /init as init process`)},
	{"init", true, regexp.MustCompile(`msg="stage start".*stage=attestd`)},
	{"attest", true, regexp.MustCompile(`^attestd: (admitted|denied)`)},
	{"unlock", true, regexp.MustCompile(`^attestd: disk: (unlocked|none)`)},
	// The first WireGuard handshake with a peer: the mesh carries traffic
	// (a node with no peer yet has no mesh phase).
	{"mesh", true, regexp.MustCompile(`^meshd: peer \S+ handshake$`)},
}

// Timeline cuts the console into phases.
func Timeline(lines []Line) []Phase {
	var out []Phase
	var prev time.Duration
	i := 0
	for _, pe := range phaseEnds {
		for j := i; j < len(lines); j++ {
			if pe.re.MatchString(lines[j].Text) {
				at := lines[j].At
				if len(out) > 0 || pe.name == "firmware" {
					out = append(out, Phase{Name: pe.name, Ours: pe.ours, Start: prev, Duration: at - prev, Marker: lines[j].Text})
				}
				prev, i = at, j
				break
			}
		}
	}
	// Direct boot has no transfer: its first marker ends both.
	if len(out) >= 2 && out[0].Marker == out[1].Marker {
		out = append(out[:1], out[2:]...)
	}
	return out
}

// Record is what a VM test writes for make bench-boot.
type Record struct {
	Test   string        `json:"test"`
	Boot   string        `json:"boot"`
	Total  time.Duration `json:"total_ns"`
	Phases []Phase       `json:"phases"`
}

// TimelineDir is where records go: $PALISADE_TIMELINE_DIR, else
// out/qemu-tests/timeline of the repository (tests run in qemu-tests/).
func TimelineDir() string {
	if d := os.Getenv("PALISADE_TIMELINE_DIR"); d != "" {
		return d
	}
	return filepath.Join("..", "out", "qemu-tests", "timeline")
}

// WriteTimeline records the VM's boot phases as JSON and returns the record.
func (v *VM) WriteTimeline(test, boot string) (*Record, error) {
	ph := Timeline(v.Console.Lines())
	r := &Record{Test: test, Boot: boot, Phases: ph}
	if len(ph) > 0 {
		last := ph[len(ph)-1]
		r.Total = last.Start + last.Duration
	}
	dir := TimelineDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return r, err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return r, err
	}
	name := strings.NewReplacer("/", "_", " ", "_").Replace(test) + ".json"
	return r, os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644)
}

// String is the phase table.
func (r *Record) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %9s %9s  %s\n", "phase", "start", "duration", "ours")
	for _, p := range r.Phases {
		fmt.Fprintf(&b, "%-10s %8.2fs %8.2fs  %v\n", p.Name, p.Start.Seconds(), p.Duration.Seconds(), p.Ours)
	}
	return b.String()
}
