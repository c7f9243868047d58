package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func validBinding() Binding {
	c := validClaims()
	return Binding{
		Role:         RoleNode,
		ClusterID:    "c0ffee",
		Exporter:     bytes.Repeat([]byte{1}, ExporterSize),
		Nonce:        bytes.Repeat([]byte{2}, NonceSize),
		ClaimsDigest: c.Digest(),
	}
}

func validClaims() Claims {
	return Claims{
		NodeID:       "node-1",
		Role:         RoleNode,
		Profile:      "qemu-tpm",
		WireGuardKey: bytes.Repeat([]byte{7}, 32),
		DiskUUIDs:    []string{"0b9a7c1e-0000-4000-8000-000000000001"},
		Endpoints:    []string{"10.0.0.1:51820"},
	}
}

// Every field of the binding must change the report data; otherwise a
// verifier could not tell two sessions, clusters or roles apart.
func TestBindingCommitsToEveryField(t *testing.T) {
	base := validBinding()
	b512, b256 := base.SHA512(), base.SHA256()
	for name, mutate := range map[string]func(*Binding){
		"role":     func(b *Binding) { b.Role = RoleKeyd },
		"cluster":  func(b *Binding) { b.ClusterID = "c0ffef" },
		"exporter": func(b *Binding) { b.Exporter = bytes.Repeat([]byte{3}, ExporterSize) },
		"nonce":    func(b *Binding) { b.Nonce = bytes.Repeat([]byte{4}, NonceSize) },
		"claims":   func(b *Binding) { b.ClaimsDigest[0] ^= 1 },
	} {
		t.Run(name, func(t *testing.T) {
			b := validBinding()
			mutate(&b)
			if b.SHA512() == b512 || b.SHA256() == b256 {
				t.Errorf("changing %s did not change the report data", name)
			}
		})
	}
}

// Length prefixes stop one field's bytes from being read as the next's.
func TestBindingNoAmbiguity(t *testing.T) {
	a := validBinding()
	a.ClusterID = "ab"
	b := validBinding()
	b.ClusterID = "a"
	b.Role = Role(string(RoleNode) + "b") // would collide without length prefixes
	if a.SHA512() == b.SHA512() {
		t.Fatal("different bindings encode to the same report data")
	}
}

func TestBindingValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*Binding)
		want   string
	}{
		"ok":       {func(*Binding) {}, ""},
		"role":     {func(b *Binding) { b.Role = "admin" }, "binding.role"},
		"cluster":  {func(b *Binding) { b.ClusterID = "" }, "binding.cluster_id"},
		"exporter": {func(b *Binding) { b.Exporter = b.Exporter[:31] }, "binding.exporter"},
		"nonce":    {func(b *Binding) { b.Nonce = nil }, "binding.nonce"},
	} {
		t.Run(name, func(t *testing.T) {
			b := validBinding()
			tc.mutate(&b)
			checkErr(t, b.Validate(), tc.want)
		})
	}
}

func TestClaimsDigestCanonical(t *testing.T) {
	a := validClaims()
	a.DiskUUIDs = []string{"0b9a7c1e-0000-4000-8000-000000000001", "0b9a7c1e-0000-4000-8000-000000000002"}
	b := a
	b.DiskUUIDs = []string{a.DiskUUIDs[1], a.DiskUUIDs[0]}
	if a.Digest() != b.Digest() {
		t.Error("disk order changed the claims digest")
	}
	c := a
	c.WireGuardKey = bytes.Repeat([]byte{8}, 32)
	if a.Digest() == c.Digest() {
		t.Error("a different WireGuard key gave the same claims digest")
	}
	d := a
	d.NodeID = "node-2"
	if a.Digest() == d.Digest() {
		t.Error("a different node ID gave the same claims digest")
	}
}

func TestClaimsValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*Claims)
		want   string
	}{
		"ok":          {func(*Claims) {}, ""},
		"node id":     {func(c *Claims) { c.NodeID = "Node_1" }, "claims.node_id"},
		"node id len": {func(c *Claims) { c.NodeID = strings.Repeat("a", 64) }, "claims.node_id"},
		"role":        {func(c *Claims) { c.Role = "" }, "claims.role"},
		"profile":     {func(c *Claims) { c.Profile = "" }, "claims.profile"},
		"wg key":      {func(c *Claims) { c.WireGuardKey = []byte{1} }, "claims.wireguard_key"},
		"uuid":        {func(c *Claims) { c.DiskUUIDs = []string{"not-a-uuid"} }, "claims.disk_uuids[0]"},
		"disks":       {func(c *Claims) { c.DiskUUIDs = make([]string, 17) }, "claims.disk_uuids"},
		"endpoint":    {func(c *Claims) { c.Endpoints = []string{""} }, "claims.endpoints[0]"},
	} {
		t.Run(name, func(t *testing.T) {
			c := validClaims()
			tc.mutate(&c)
			checkErr(t, c.Validate(), tc.want)
		})
	}
}

func TestEvidenceCheck(t *testing.T) {
	ok := &Evidence{Platform: PlatformSNP, Blobs: map[string][]byte{"report": {1}}}
	if err := ok.Check(PlatformSNP); err != nil {
		t.Fatalf("valid evidence: %v", err)
	}
	big := &Evidence{Platform: PlatformSNP, Blobs: map[string][]byte{"report": make([]byte, MaxBlobSize+1)}}
	many := &Evidence{Platform: PlatformSNP, Blobs: map[string][]byte{}}
	for i := 0; i <= MaxBlobs; i++ {
		many.Blobs[fmt.Sprint(i)] = []byte{1}
	}
	for name, tc := range map[string]struct {
		ev   *Evidence
		want string
	}{
		"nil":      {nil, "empty"},
		"platform": {ok, `platform "sev-snp", verifier is for "tdx"`},
		"big":      {big, `blob "report"`},
		"many":     {many, "17 blobs"},
	} {
		t.Run(name, func(t *testing.T) {
			want := PlatformSNP
			if name == "platform" {
				want = PlatformTDX
			}
			err := tc.ev.Check(want)
			checkErr(t, err, tc.want)
			if ClassOf(err) != ClassMalformed {
				t.Errorf("class %q, want %q", ClassOf(err), ClassMalformed)
			}
		})
	}
	if _, err := ok.Blob("certs"); err == nil || !strings.Contains(err.Error(), `"certs"`) {
		t.Errorf("missing blob: %v", err)
	}
}

func TestClassOf(t *testing.T) {
	d := Denyf(ClassChain, "vcek: %s", "bad")
	if ClassOf(d) != ClassChain || ClassOf(fmt.Errorf("wrap: %w", d)) != ClassChain {
		t.Error("class lost through wrapping")
	}
	if ClassOf(Deny(ClassPolicy, d)) != ClassChain {
		t.Error("re-denying changed the inner class")
	}
	if ClassOf(errors.New("x")) != ClassInternal || ClassOf(nil) != "" {
		t.Error("ClassOf of plain error or nil")
	}
}

func validRefs() []Reference {
	return []Reference{
		{Profile: "qemu-tpm", Platform: PlatformTPM, TPM: &TPMReference{PCRs: map[int]HexBytes{4: make([]byte, 32)}}},
		{Profile: "snp", Platform: PlatformSNP, SNP: &SNPReference{Product: "Milan", Measurement: make([]byte, 48)}},
		{Profile: "tdx", Platform: PlatformTDX, TDX: &TDXReference{MRTD: make([]byte, 48),
			RTMR:         [4]HexBytes{make([]byte, 48), make([]byte, 48), make([]byte, 48), make([]byte, 48)},
			TDAttributes: make([]byte, 8), XFAM: make([]byte, 8), MinTEETCBSVN: make([]byte, 16)}},
	}
}

func TestReferenceValidate(t *testing.T) {
	for _, r := range validRefs() {
		if err := r.Validate(); err != nil {
			t.Errorf("%s: %v", r.Profile, err)
		}
	}
	refs := validRefs()
	for name, tc := range map[string]struct {
		r    Reference
		want string
	}{
		"no profile":   {Reference{Platform: PlatformTPM}, "reference.profile"},
		"platform":     {Reference{Profile: "x", Platform: "sgx"}, `platform "sgx"`},
		"two sections": {Reference{Profile: "x", Platform: PlatformTPM, TPM: refs[0].TPM, SNP: refs[1].SNP}, "2 platform sections"},
		"pcr index":    {Reference{Profile: "x", Platform: PlatformTPM, TPM: &TPMReference{PCRs: map[int]HexBytes{24: make([]byte, 32)}}}, "tpm.pcrs[24]"},
		"pcr size":     {Reference{Profile: "x", Platform: PlatformTPM, TPM: &TPMReference{PCRs: map[int]HexBytes{4: make([]byte, 20)}}}, "want 32"},
		"measurement":  {Reference{Profile: "x", Platform: PlatformSNP, SNP: &SNPReference{Product: "Milan", Measurement: make([]byte, 32)}}, "sev_snp.measurement"},
		"host data":    {Reference{Profile: "x", Platform: PlatformSNP, SNP: &SNPReference{Product: "Milan", Measurement: make([]byte, 48), HostData: []byte{1}}}, "sev_snp.host_data"},
		"rtmr":         {func() Reference { r := validRefs()[2]; r.TDX.RTMR[2] = nil; return r }(), "tdx.rtmr[2]"},
	} {
		t.Run(name, func(t *testing.T) { checkErr(t, tc.r.Validate(), tc.want) })
	}
}

func TestReferenceJSONRoundTrip(t *testing.T) {
	for _, r := range validRefs() {
		r.SNP = nil
		if r.Platform == PlatformSNP {
			r.SNP = &SNPReference{Product: "Genoa", Measurement: bytes.Repeat([]byte{0xab}, 48), MinTCB: SNPTCB{SNP: 8}}
		}
		p, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		var back Reference
		if err := json.Unmarshal(p, &back); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(r, back); diff != "" {
			t.Errorf("%s round trip (-want +got):\n%s", r.Profile, diff)
		}
	}
	var h HexBytes
	if err := json.Unmarshal([]byte(`"zz"`), &h); err == nil {
		t.Error("bad hex accepted")
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Errorf("no error, want one naming %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Errorf("error %q does not name %q", err, want)
	}
}

// FuzzReferenceJSON: manifests carry references; decoding and validating
// outside bytes must never panic.
func FuzzReferenceJSON(f *testing.F) {
	for _, r := range validRefs() {
		p, _ := json.Marshal(r)
		f.Add(p)
	}
	f.Add([]byte(`{"platform":"tdx","tdx":{"rtmr":["00","",null]}}`))
	f.Fuzz(func(t *testing.T, p []byte) {
		var r Reference
		if json.Unmarshal(p, &r) == nil {
			_ = r.Validate()
		}
	})
}
