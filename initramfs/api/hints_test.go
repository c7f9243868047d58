package api

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestStatusHint(t *testing.T) {
	for _, ok := range []string{"http://10.0.0.1:8080", "http://10.0.0.1:8080/", "http://[fd00::1]:8080", "http://prov.example", "http://h:65535"} {
		if err := CheckStatusURL(ok); err != nil {
			t.Errorf("CheckStatusURL(%q) = %v, want nil", ok, err)
		}
	}
	for bad, want := range map[string]string{
		"":                                   "want an http URL",
		"https://10.0.0.1:8080":              "want http",
		"ftp://h":                            "want http",
		"10.0.0.1:8080":                      "status",
		"http://user:pw@10.0.0.1":            "without user",
		"http://h/x":                         "path",
		"http://h/?a=b":                      "without user, query",
		"http://h#frag":                      "without user, query",
		"http://:8080":                       "empty host",
		"http://h:0":                         "port out of",
		"http://h:99999":                     "port",
		"http://h:":                          "empty port",
		"http://h\x00":                       "printable",
		"http://h /":                         "printable",
		"http://" + strings.Repeat("a", 194): "want an http URL of 1-200",
		"http:h":                             "without user",
	} {
		if err := CheckStatusURL(bad); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("CheckStatusURL(%q) = %v, want an error with %q", bad, err, want)
		}
	}
}

// The status hint travels both ways the others do, and the cmdline's wins.
func TestStatusHintSources(t *testing.T) {
	d, err := ParseDHCPOption([]byte("keyd=10.0.0.2:7443 cluster=c1 status=http://10.0.0.1:8080"))
	if err != nil {
		t.Fatal(err)
	}
	want := Hints{Keyd: []string{"10.0.0.2:7443"}, Cluster: "c1", Status: "http://10.0.0.1:8080",
		Sources: []string{"dhcp:keyd", "dhcp:cluster", "dhcp:status"}}
	if diff := cmp.Diff(want, d); diff != "" {
		t.Errorf("ParseDHCPOption (-want +got):\n%s", diff)
	}
	c, err := ParseCmdline("quiet palisade.status=http://192.0.2.9:80")
	if err != nil {
		t.Fatal(err)
	}
	if got := Merge(c, d).Status; got != "http://192.0.2.9:80" {
		t.Errorf("merged status %q, want the cmdline's", got)
	}
	if got := Merge(Hints{}, d).Status; got != "http://10.0.0.1:8080" {
		t.Errorf("merged status %q, want the DHCP one", got)
	}
	if _, err := ParseDHCPOption([]byte("keyd=10.0.0.2:7443 status=https://x")); err == nil || !strings.Contains(err.Error(), "status") {
		t.Errorf("bad status hint: %v, want an error naming status", err)
	}
	if _, err := ParseCmdline("palisade.status=http://u@h"); err == nil || !strings.Contains(err.Error(), "palisade.status") {
		t.Errorf("bad status cmdline: %v, want an error naming palisade.status", err)
	}
}

func FuzzStatusHint(f *testing.F) {
	for _, s := range []string{"status=http://10.0.0.1:8080", "status=http://[::1]:1/", "status=http://u@h", "status=http://h:", "status=http:%zz"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseDHCPOption(b)
		if err != nil || h.Status == "" {
			return
		}
		if err := CheckStatusURL(h.Status); err != nil || len(h.Status) > MaxStatusURL {
			t.Fatalf("accepted status %q: %v", h.Status, err)
		}
	})
}
