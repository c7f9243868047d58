// Package modalias reads depmod's modules.alias and matches its patterns
// against the modaliases of present devices, as modprobe does: the image
// builder checks that every device driver it ships can be matched, and the
// init loads those whose hardware is present.
package modalias

import (
	"bufio"
	"bytes"
	"fmt"
	"path"
	"strings"
)

// maxAliases bounds modules.alias: Debian's full kernel has about 25,000
// lines; an initramfs's subset has a few thousand.
const maxAliases = 100_000

// Parse reads a modules.alias file ("alias <pattern>
// <module>" lines, '#' comments, as depmod writes it) into patterns by
// module name, names normalised to underscores as the kernel does.
func Parse(b []byte) (map[string][]string, error) {
	out := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<16)
	n := 0
	for line := 1; sc.Scan(); line++ {
		t := strings.TrimSpace(sc.Text())
		if t == "" || t[0] == '#' {
			continue
		}
		f := strings.Fields(t)
		if len(f) != 3 || f[0] != "alias" {
			return nil, fmt.Errorf("modules.alias line %d: %q, want \"alias <pattern> <module>\"", line, t)
		}
		if _, err := path.Match(f[1], ""); err != nil {
			return nil, fmt.Errorf("modules.alias line %d: pattern %q: %v", line, f[1], err)
		}
		if n++; n > maxAliases {
			return nil, fmt.Errorf("modules.alias: more than %d aliases", maxAliases)
		}
		m := Name(f[2])
		out[m] = append(out[m], f[1])
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("modules.alias: %w", err)
	}
	return out, nil
}

// Name is a module name as the kernel spells it ('-' read as '_').
func Name(s string) string { return strings.ReplaceAll(s, "-", "_") }

// Match returns, in the order of want, the modules one of
// whose alias patterns matches a present device's modalias (fnmatch rules,
// as modprobe applies them; a modalias holds no '/').
func Match(want []string, aliases map[string][]string, devices []string) []string {
	var out []string
	for _, m := range want {
		if matchesAny(aliases[Name(m)], devices) {
			out = append(out, m)
		}
	}
	return out
}

func matchesAny(patterns, devices []string) bool {
	for _, p := range patterns {
		for _, d := range devices {
			if ok, _ := path.Match(p, d); ok {
				return true
			}
		}
	}
	return false
}
