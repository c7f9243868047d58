package vm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// descendants returns the process IDs below self, with their names.
func descendants(self int) map[int]string {
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
	out := map[int]string{}
	for pid, c := range comm {
		for p, n := parent[pid], 0; p > 1 && n < 64; p, n = parent[p], n+1 {
			if p == self {
				out[pid] = c
				break
			}
		}
	}
	return out
}

// Abort tears down what this process started when it is interrupted
// (SIGINT, SIGTERM) and test cleanups will not run: it kills every
// descendant process (QEMU in its own process group, swtpm, the
// provisioner inside its namespace, a verifier) and deletes this
// process's namespaces, with their bridges and taps. It returns what it
// removed.
func Abort() []string {
	var out []string
	for pid, c := range descendants(os.Getpid()) {
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			out = append(out, fmt.Sprintf("process %d (%s)", pid, c))
		}
	}
	ns, _ := filepath.Glob(fmt.Sprintf("/run/netns/pq%d-*", os.Getpid()))
	for _, n := range ns {
		if exec.Command("ip", "netns", "del", filepath.Base(n)).Run() == nil {
			out = append(out, "namespace "+filepath.Base(n))
		}
	}
	return out
}

// LeftOvers lists what this test process started and did not clean up:
// QEMU and swtpm processes that are its descendants, and its namespaces
// (every namespace of NewNetwork is named after the test process). Taps
// live inside those namespaces, so a deleted namespace leaves none.
func LeftOvers() []string {
	var out []string
	self := os.Getpid()
	for pid, c := range descendants(self) {
		if strings.HasPrefix(c, "qemu-system") || c == "swtpm" || c == "ip" {
			out = append(out, fmt.Sprintf("process %d (%s)", pid, c))
		}
	}
	ns, _ := filepath.Glob(fmt.Sprintf("/run/netns/pq%d-*", self))
	for _, n := range ns {
		out = append(out, "namespace "+filepath.Base(n))
	}
	return out
}
