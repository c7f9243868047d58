package httpboot

import (
	"strings"
	"testing"
)

// FuzzCheckName feeds arbitrary request paths to the name check: whatever
// it accepts is relative and has no ".." element, NUL or backslash.
func FuzzCheckName(f *testing.F) {
	for _, s := range []string{"boot/uki.efi", "../x", "a/../../b", "/abs", `a\b`, "a\x00b", "a//b", ".", "..", "a/..", "%2e%2e"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if checkName(name) != nil {
			return
		}
		if name == "" || strings.HasPrefix(name, "/") || strings.ContainsAny(name, "\x00\\") {
			t.Fatalf("accepted %q", name)
		}
		for _, part := range strings.Split(name, "/") {
			if part == ".." {
				t.Fatalf("accepted %q with a .. element", name)
			}
		}
		_ = contentType(name)
	})
}
