package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTemplateParses(t *testing.T) {
	c, err := Parse([]byte(Template))
	if err != nil {
		t.Fatal(err)
	}
	if c.DHCP == nil || c.DHCP.Mode != "proxy" || c.TFTP == nil || c.TFTP.Root != "/var/lib/palisade-provisioner/images" {
		t.Errorf("template sections: dhcp %+v tftp %+v", c.DHCP, c.TFTP)
	}
	if c.Boot.HTTPBase != "http://127.0.0.1:8080" {
		t.Errorf("derived http_base = %q", c.Boot.HTTPBase)
	}
	if len(c.Profiles) != 1 || c.Boot.DefaultProfile != "worker" {
		t.Errorf("profiles %+v", c.Profiles)
	}
	if !strings.Contains(Template, `"cluster":`) || !strings.Contains(Template, "option\n  // 224") {
		t.Error("template does not document profiles[].cluster and option 224")
	}
}

func TestProfileCluster(t *testing.T) {
	c, err := Parse([]byte(`{"version":1,"data_dir":"/d","api":{"admin_token_file":"/t"},
		"profiles":[{"name":"cp","image":"i","platform":"sev-snp","role":"control-plane",
		"keyd_hints":["10.0.0.2:7443"],"cluster":"prod.eu-1"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if p := c.Profiles[0]; p.Cluster != "prod.eu-1" || p.HintText() != "keyd=10.0.0.2:7443 cluster=prod.eu-1" {
		t.Errorf("profile %+v, hints %q", p, p.HintText())
	}
}

func TestMinimal(t *testing.T) {
	c, err := Parse([]byte(`{"version":1, "data_dir":"/d", "api":{"admin_token_file":"/t"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Default()
	want.DataDir, want.ImagesDir, want.API.AdminTokenFile = "/d", "/d/images", "/t"
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestValidateNamesField(t *testing.T) {
	base := `"data_dir":"/d","api":{"admin_token_file":"/t"}`
	for _, tc := range []struct{ body, want string }{
		{`{` + base + `}`, "version: missing"},
		{`{"version":2,` + base + `}`, "version: 2 is not supported"},
		{`{"version":1,"data_dir":"rel","api":{"admin_token_file":"/t"}}`, "data_dir:"},
		{`{"version":1,"data_dir":"/d","api":{"admin_token_file":""}}`, "api.admin_token_file: required"},
		{`{"version":1,"data_dir":"/d","api":{"admin_token_file":"/t","read_only_token_file":"/t"}}`, "api.read_only_token_file"},
		{`{"version":1,"data_dir":"/d","api":{"listen":"nope","admin_token_file":"/t"}}`, "api.listen"},
		{`{"version":1,` + base + `,"bogus":1}`, `unknown field "bogus"`},
		{`{"version":1,` + base + `,"dhcp":{"mode":"x"}}`, "dhcp.mode:"},
		{`{"version":1,` + base + `,"tftp":{"max_block_size":9}}`, "tftp.max_block_size"},
		{`{"version":1,` + base + `,"http":{"listen":"x"}}`, "http.listen"},
		{`{"version":1,` + base + `,"boot":{"http_base":"ftp://x"}}`, "boot.http_base"},
		{`{"version":1,` + base + `,"boot":{"bios_file":"../x"}}`, "boot.bios_file"},
		{`{"version":1,` + base + `,"profiles":[{"name":"a","image":"i","platform":"sgx","role":"worker"}]}`, "profiles[0].platform"},
		{`{"version":1,` + base + `,"profiles":[{"name":"a","image":"i","platform":"tpm","role":"worker","cluster":"a b"}]}`, "profiles[0].cluster"},
		{`{"version":1,` + base + `,"profiles":[{"name":"a","image":"i","platform":"tpm","role":"worker","cluster":"` + strings.Repeat("c", 65) + `"}]}`, "profiles[0].cluster"},
		{`{"version":1,` + base + `,"profiles":[{"name":"a","image":"i","platform":"tpm","role":"worker","keyd_hints":["10.0.0.2:0"]}]}`, "profiles[0].keyd_hints[0]"},
		{`{"version":1,` + base + `,"profiles":[{"name":"a","image":"i","platform":"tpm","role":"worker"},{"name":"a","image":"i","platform":"tpm","role":"worker"}]}`, "profiles[1].name"},
		{`{"version":1,` + base + `,"accept":[{"name":"r"}]}`, "accept[0].mac_prefix"},
		{`{"version":1,` + base + `,"log":{"level":"loud"}}`, "log.level"},
		{`{"version":1,` + base + `,"log":{"format":"xml"}}`, "log.format"},
		{`{"version":1,` + base + `} {}`, "after top-level value"},
		{`{"version":1, /* open`, "unterminated"},
	} {
		_, err := Parse([]byte(tc.body))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Parse(%s) = %v, want error containing %q", tc.body, err, tc.want)
		}
	}
}

func TestStripComments(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`{"a":"x//y"} // c`, `{"a":"x//y"} `},
		{"{\"a\":1 /* x\ny */}", "{\"a\":1 \n}"},
		{`{"a":"q\"//"}//`, `{"a":"q\"//"}`},
		{`{"a":"/*"}`, `{"a":"/*"}`},
		{"// only\n{}", "\n{}"},
	} {
		got, err := StripComments([]byte(tc.in))
		if err != nil || string(got) != tc.want {
			t.Errorf("StripComments(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestTokens(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	admin := write("admin", "0123456789abcdef0123\n", 0o600)
	read := write("read", "fedcba9876543210fedc", 0o640)
	c := Config{API: API{AdminTokenFile: admin, ReadOnlyTokenFile: read}}
	a, r, err := c.Tokens()
	if err != nil || a != "0123456789abcdef0123" || r != "fedcba9876543210fedc" {
		t.Errorf("Tokens = %q %q %v", a, r, err)
	}
	for _, tc := range []struct {
		c    Config
		want string
	}{
		{Config{API: API{AdminTokenFile: write("world", "0123456789abcdef0123", 0o644)}}, "api.admin_token_file: " + dir + "/world has mode -rw-r--r--"},
		{Config{API: API{AdminTokenFile: write("short", "abc", 0o600)}}, "shorter than 16"},
		{Config{API: API{AdminTokenFile: filepath.Join(dir, "missing")}}, "no such file"},
		{Config{API: API{AdminTokenFile: admin, ReadOnlyTokenFile: write("same", "0123456789abcdef0123", 0o600)}}, "holds the admin token"},
	} {
		if _, _, err := tc.c.Tokens(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Tokens(%+v) = %v, want %q", tc.c.API, err, tc.want)
		}
	}
}

func TestLoad(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.json")
	os.WriteFile(p, []byte(`{"version":1,"data_dir":"/d","api":{"admin_token_file":"/t"},"log":{"level":"x"}}`), 0o600)
	if _, err := Load(p); err == nil || !strings.HasPrefix(err.Error(), p+": config: log.level") {
		t.Errorf("Load = %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(Template))
	f.Add([]byte(`{"version":1,"data_dir":"/d","api":{"admin_token_file":"/t"}}`))
	f.Add([]byte(`{"a":"//"/**/}`))
	f.Add([]byte(`/*`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := StripComments(b)
		if err == nil && len(s) > len(b) {
			t.Fatalf("stripping grew the input")
		}
		c, err := Parse(b)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config Validate rejects: %v", verr)
			}
		}
	})
}
