package vm

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestTimeline(t *testing.T) {
	s := time.Second
	lines := []Line{
		{1 * s, "BdsDxe: loading Boot0001"},
		{9 * s, ">>Start PXE over IPv4."},
		{20 * s, "NBP file downloaded successfully."},
		{21 * s, "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"},
		{24 * s, "[    3.05] Run /init as init process"},
		{26 * s, `time=x level=INFO msg="stage start" component=init stage=attestd path=/bin/attestd`},
		{29 * s, "attestd: admitted node=n profile=p platform=tpm keyd=k log_index=0"},
		{30 * s, "attestd: disk: none (diskless)"},
		{31 * s, "meshd: running interface=palisade0 public_key=k addresses=[] port=51820"},
		{32 * s, "meshd: peer n2 added revision=2 endpoint=10.0.0.3:51820 mesh=fd00::2"},
		{33 * s, "meshd: peer n2 handshake"},
	}
	got := Timeline(lines)
	var names []string
	var sum time.Duration
	for _, p := range got {
		names = append(names, p.Name)
		sum += p.Duration
	}
	if d := cmp.Diff([]string{"firmware", "transfer", "kernel", "init", "attest", "unlock", "mesh"}, names); d != "" {
		t.Fatalf("phases (-want +got):\n%s", d)
	}
	if got[0].Duration != 9*s || got[1].Duration != 12*s || got[4].Duration != 3*s || got[6].Duration != 3*s || sum != 33*s {
		t.Errorf("durations: %+v", got)
	}
	if got[1].Ours || !got[3].Ours || !got[4].Ours {
		t.Errorf("ownership: %+v", got)
	}

	// Direct boot: the first marker is the kernel's stub; no transfer.
	direct := Timeline([]Line{{5 * s, "EFI stub: Loaded initrd"}, {8 * s, "Run /init as init process"}})
	if len(direct) != 2 || direct[0].Name != "firmware" || direct[1].Name != "kernel" {
		t.Errorf("direct boot: %+v", direct)
	}
	// Markers out of order do not count backwards.
	if ph := Timeline([]Line{{1 * s, "attestd: admitted"}, {2 * s, ">>Start PXE over IPv4"}}); len(ph) != 1 {
		t.Errorf("out of order: %+v", ph)
	}
}

func TestConsole(t *testing.T) {
	c := newConsole()
	go c.read(strings.NewReader("\x1b[2J\x1b[01;01Hfirst\r\nsecond line  \r\n\r\nthird\n"), time.Now())
	m, err := c.Wait(regexp.MustCompile(`^second (\w+)$`), 5*time.Second)
	if err != nil || m[1] != "line" {
		t.Fatalf("Wait = %v, %v", m, err)
	}
	if _, err := c.Wait(regexp.MustCompile(`third`), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	var texts []string
	for _, l := range c.Lines() {
		texts = append(texts, l.Text)
	}
	if d := cmp.Diff([]string{"first", "second line", "third"}, texts); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	if _, err := c.Wait(regexp.MustCompile(`never`), 50*time.Millisecond); err == nil {
		t.Error("Wait matched nothing but succeeded")
	}
	c.close()
	if _, err := c.Wait(regexp.MustCompile(`never`), 5*time.Second); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Errorf("Wait after exit: %v", err)
	}
}

func TestMAC(t *testing.T) {
	a, b := macFor("a"), macFor("b")
	if a == b || !strings.HasPrefix(a, "52:54:00:") || len(a) != 17 {
		t.Errorf("macFor: %s %s", a, b)
	}
}
