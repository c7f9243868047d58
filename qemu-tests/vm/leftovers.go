package vm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// LeftOvers lists what this test process started and did not clean up:
// QEMU and swtpm processes that are its descendants, and its namespaces
// (every namespace of NewNetwork is named after the test process). Taps
// live inside those namespaces, so a deleted namespace leaves none.
func LeftOvers() []string {
	var out []string
	self := os.Getpid()
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	parent := map[int]int{}
	comm := map[int]string{}
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid …; comm may hold spaces and parens.
		s := string(b)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		var pid, ppid int
		var state string
		fmt.Sscanf(s[:open], "%d", &pid)
		fmt.Sscanf(s[close+1:], " %s %d", &state, &ppid)
		parent[pid], comm[pid] = ppid, s[open+1:close]
	}
	for pid, c := range comm {
		if !strings.HasPrefix(c, "qemu-system") && c != "swtpm" && c != "ip" {
			continue
		}
		for p, n := parent[pid], 0; p > 1 && n < 64; p, n = parent[p], n+1 {
			if p == self {
				out = append(out, fmt.Sprintf("process %d (%s)", pid, c))
				break
			}
		}
	}
	ns, _ := filepath.Glob(fmt.Sprintf("/run/netns/pq%d-*", self))
	for _, n := range ns {
		out = append(out, "namespace "+filepath.Base(n))
	}
	return out
}
