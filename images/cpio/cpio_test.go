package cpio

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func sample(t *testing.T, order []string) *Archive {
	t.Helper()
	a := New()
	files := map[string]string{"bin/init": "#!init", "etc/palisade/init.json": "{}", "lib/modules/x.ko": "ko"}
	for _, n := range order {
		if err := a.File(n, 0o755, []byte(files[n])); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Add(Entry{Name: "/sbin/init", Mode: fs.ModeSymlink | 0o777, Data: []byte("/bin/init")}); err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDeterministic(t *testing.T) {
	var x, y bytes.Buffer
	if err := sample(t, []string{"bin/init", "etc/palisade/init.json", "lib/modules/x.ko"}).Gzip(&x, 1700000000); err != nil {
		t.Fatal(err)
	}
	if err := sample(t, []string{"lib/modules/x.ko", "etc/palisade/init.json", "bin/init"}).Gzip(&y, 1700000000); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(x.Bytes(), y.Bytes()) {
		t.Error("insertion order changed the archive")
	}
	var z bytes.Buffer
	if err := sample(t, []string{"bin/init", "etc/palisade/init.json", "lib/modules/x.ko"}).Gzip(&z, 1700000001); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(x.Bytes(), z.Bytes()) {
		t.Error("mtime did not reach the archive")
	}
}

func TestConflict(t *testing.T) {
	a := New()
	if err := a.File("a", 0o644, []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := a.File("a", 0o644, []byte("2")); err == nil {
		t.Error("second, different a accepted")
	}
}

// TestCpioReads checks the archive against GNU cpio, an independent reader.
func TestCpioReads(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatal("cpio not installed (apt-get install cpio)")
	}
	var b bytes.Buffer
	if err := sample(t, []string{"bin/init", "etc/palisade/init.json", "lib/modules/x.ko"}).WriteTo(&b, 1700000000); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cmd := exec.Command("cpio", "-idm", "--quiet", "--no-absolute-filenames")
	cmd.Dir, cmd.Stdin = dir, &b
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(dir, "etc/palisade/init.json"))
	if err != nil || string(got) != "{}" {
		t.Fatalf("init.json = %q, %v", got, err)
	}
	l, err := os.Readlink(filepath.Join(dir, "sbin/init"))
	if d := cmp.Diff("/bin/init", l); d != "" || err != nil {
		t.Errorf("symlink %v: %s", err, d)
	}
	fi, _ := os.Stat(filepath.Join(dir, "bin/init"))
	if fi.ModTime().Unix() != 1700000000 || fi.Mode().Perm() != 0o755 {
		t.Errorf("bin/init: mtime %d mode %s", fi.ModTime().Unix(), fi.Mode())
	}
	list, _ := exec.Command("sh", "-c", "cd "+dir+" && find . | sort").Output()
	want := ".\n./bin\n./bin/init\n./etc\n./etc/palisade\n./etc/palisade/init.json\n./lib\n./lib/modules\n./lib/modules/x.ko\n./sbin\n./sbin/init\n"
	if d := cmp.Diff(want, string(list)); d != "" {
		t.Errorf("tree (-want +got):\n%s", d)
	}
}
