package archtest

import (
	"bufio"
	"bytes"
	"os/exec"
	"path"
	"strings"
	"testing"
)

const mod = "github.com/palisade-cc/palisade/"

// pkgs maps each package of the module (relative path) to its project
// dependencies, transitively, as `go list -deps` sees them without tests.
func pkgs(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", `{{.ImportPath}}{{range .Deps}} {{.}}{{end}}`, mod+"...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	m := map[string][]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<22)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		var deps []string
		for _, d := range f[1:] {
			if strings.HasPrefix(d, mod) {
				deps = append(deps, strings.TrimPrefix(d, mod))
			}
		}
		m[strings.TrimPrefix(f[0], mod)] = deps
	}
	return m
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

// testSupport reports whether p is a package of test roots or test helpers
// (…/tpmtest, …/snptest): it must never reach a production binary.
func testSupport(p string) bool {
	b := path.Base(p)
	return strings.HasSuffix(b, "test") && b != "attest" && p != "tools/archtest"
}

var components = []string{"attestd", "keyd", "meshd", "verifier", "images", "initramfs", "provisioner"}

// allowed says whether package p may depend on package d, and why not.
func allowed(p, d string) (bool, string) {
	switch {
	case under(d, "qemu-tests"), under(d, "bench"):
		return false, "nothing imports qemu-tests or bench (rule 6)"
	case testSupport(d) && !testSupport(p) && !under(p, "qemu-tests") && !under(p, "bench"):
		return false, "test roots and helpers never reach a production package"
	case under(p, "qemu-tests"), under(p, "bench"), testSupport(p) && !under(p, "tools"):
		// The harness and the benchmarks measure components from outside.
		return true, ""
	case p == "internal/attest":
		return false, "internal/attest imports nothing of the project (rule 1)"
	case strings.HasPrefix(p, "internal/attest/"), under(p, "internal/manifest"):
		return d == "internal/attest", "platforms and the manifest import only internal/attest (rule 2)"
	case under(p, "internal/atls"):
		return d == "internal/attest", "internal/atls imports only internal/attest; platforms are handed to it (rule 3)"
	case under(p, "provisioner"):
		if under(d, "internal/attest") || under(d, "internal/atls") || under(d, "keyd") {
			return false, "the provisioner is outside the trusted base: no trust code (rule 5)"
		}
	case under(p, "tools"):
		return false, "tools import nothing of the project"
	}
	for _, c := range components {
		if under(d, c) && !under(p, c) && !under(d, c+"/api") {
			return false, "a component imports only another component's api package (rule 4)"
		}
	}
	return true, ""
}

func TestImportRules(t *testing.T) {
	all := pkgs(t)
	if len(all) == 0 {
		t.Fatal("go list found no packages")
	}
	for p, deps := range all {
		for _, d := range deps {
			if ok, why := allowed(p, d); !ok {
				t.Errorf("%s imports %s: %s", p, d, why)
			}
		}
	}
}

// The rules themselves must bite: each case here is a violation.
func TestRulesDeny(t *testing.T) {
	for _, c := range [][2]string{
		{"internal/attest", "internal/atls"},
		{"internal/attest/snp", "internal/attest/tdx"},
		{"internal/attest/snp", "internal/atls"},
		{"internal/manifest", "internal/atls"},
		{"internal/atls", "internal/attest/tpm"},
		{"provisioner", "internal/attest"},
		{"provisioner/dhcp", "internal/atls"},
		{"provisioner", "keyd/api"},
		{"keyd", "meshd/peers"},
		{"attestd", "qemu-tests"},
		{"keyd", "internal/attest/snp/snptest"},
		{"internal/attest/tpm", "internal/attest/tpm/tpmtest"},
		{"tools/testsum", "internal/attest"},
		{"keyd", "bench/keyd"},
	} {
		if ok, _ := allowed(c[0], c[1]); ok {
			t.Errorf("%s → %s allowed, want denied", c[0], c[1])
		}
	}
	for _, c := range [][2]string{
		{"internal/attest/snp", "internal/attest"},
		{"keyd", "internal/atls"},
		{"attestd", "keyd/api"},
		{"internal/attest/snp/snptest", "internal/attest/snp"},
		{"qemu-tests", "internal/attest/tdx/tdxtest"},
		{"provisioner/dhcp", "provisioner/inventory"},
		{"bench/tftp", "provisioner/tftp"},
		{"bench/storm", "provisioner/pxetest"},
	} {
		if ok, why := allowed(c[0], c[1]); !ok {
			t.Errorf("%s → %s denied (%s), want allowed", c[0], c[1], why)
		}
	}
}
