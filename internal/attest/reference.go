package attest

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
)

// HexBytes is a byte string that JSON writes as lower-case hex.
type HexBytes []byte

// MarshalJSON writes b as a hex string.
func (b HexBytes) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(b)) }

// UnmarshalJSON reads a hex string.
func (b *HexBytes) UnmarshalJSON(p []byte) error {
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return err
	}
	d, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("hex: %w", err)
	}
	*b = d
	return nil
}

func (b HexBytes) String() string { return hex.EncodeToString(b) }

// Reference holds the accepted values of one hardware profile: a platform, a
// firmware build, a secure-boot state, a VM shape. A verifier denies anything
// that is not exactly these.
type Reference struct {
	Profile  string        `json:"profile"`
	Platform Platform      `json:"platform"`
	TPM      *TPMReference `json:"tpm,omitempty"`
	SNP      *SNPReference `json:"sev_snp,omitempty"`
	TDX      *TDXReference `json:"tdx,omitempty"`
}

// TPMReference pins SHA-256 PCR values. Every PCR listed is quoted and must
// match exactly; PCRs not listed are neither quoted nor trusted.
type TPMReference struct {
	PCRs map[int]HexBytes `json:"pcrs"`
}

// SNPTCB is an SEV-SNP TCB version, component-wise (SEV-SNP ABI §2.2).
type SNPTCB struct {
	BootLoader uint8 `json:"bootloader"`
	TEE        uint8 `json:"tee"`
	SNP        uint8 `json:"snp"`
	Microcode  uint8 `json:"microcode"`
	// FMC is only present on Turin and later.
	FMC uint8 `json:"fmc,omitempty"`
}

// SNPReference pins an SEV-SNP guest.
type SNPReference struct {
	// Product is the AMD product line whose pinned roots apply ("Milan",
	// "Genoa", "Turin").
	Product string `json:"product"`
	// Measurement is the 48-byte launch digest.
	Measurement HexBytes `json:"measurement"`
	// HostData is the 32-byte HOST_DATA; absent means all zero.
	HostData HexBytes `json:"host_data,omitempty"`
	// FamilyID and ImageID (16 bytes each) are pinned; absent means zero.
	FamilyID HexBytes `json:"family_id,omitempty"`
	ImageID  HexBytes `json:"image_id,omitempty"`
	// MinGuestSVN is the lowest accepted GUEST_SVN.
	MinGuestSVN uint32 `json:"min_guest_svn"`
	// MinTCB is the component-wise lowest accepted reported TCB.
	MinTCB SNPTCB `json:"min_tcb"`
	// MinBuild and MinAPIVersion (major<<8|minor) bound the firmware.
	MinBuild      uint8  `json:"min_build"`
	MinAPIVersion uint16 `json:"min_api_version"`
	// SMT says whether the guest policy may allow SMT.
	SMT bool `json:"smt"`
	// AllowVLEK accepts reports signed by a VLEK as well as a VCEK.
	AllowVLEK bool `json:"allow_vlek"`
}

// TDXReference pins an Intel TDX trust domain.
type TDXReference struct {
	MRTD HexBytes `json:"mrtd"`
	// RTMR are the four runtime registers, each 48 bytes.
	RTMR [4]HexBytes `json:"rtmr"`
	// MRConfigID, MROwner, MROwnerConfig: absent means all zero.
	MRConfigID    HexBytes `json:"mrconfigid,omitempty"`
	MROwner       HexBytes `json:"mrowner,omitempty"`
	MROwnerConfig HexBytes `json:"mrownerconfig,omitempty"`
	// TDAttributes and XFAM are pinned exactly (8 bytes each).
	TDAttributes HexBytes `json:"td_attributes"`
	XFAM         HexBytes `json:"xfam"`
	// SeptVEDisable is what TD_ATTRIBUTES bit 28 must say.
	SeptVEDisable bool `json:"sept_ve_disable"`
	// MinTEETCBSVN is the component-wise lowest TEE_TCB_SVN (16 bytes).
	MinTEETCBSVN HexBytes `json:"min_tee_tcb_svn"`
	// MRSEAM lists accepted TDX module measurements; empty accepts any
	// module the TCB info rates acceptable.
	MRSEAM []HexBytes `json:"mrseam,omitempty"`
}

// Validate checks that the reference fits its platform and names the first
// bad field.
func (r *Reference) Validate() error {
	if r.Profile == "" {
		return fmt.Errorf("reference.profile: empty")
	}
	if err := r.Platform.Validate(); err != nil {
		return fmt.Errorf("reference %q: %w", r.Profile, err)
	}
	n := 0
	for _, set := range []bool{r.TPM != nil, r.SNP != nil, r.TDX != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("reference %q: %d platform sections, want exactly the one for %q", r.Profile, n, r.Platform)
	}
	switch r.Platform {
	case PlatformTPM:
		if r.TPM == nil {
			return fmt.Errorf("reference %q: platform tpm without a tpm section", r.Profile)
		}
		if len(r.TPM.PCRs) == 0 {
			return fmt.Errorf("reference %q: tpm.pcrs: empty", r.Profile)
		}
		for i, v := range r.TPM.PCRs {
			if i < 0 || i > 23 {
				return fmt.Errorf("reference %q: tpm.pcrs[%d]: index out of 0-23", r.Profile, i)
			}
			if len(v) != 32 {
				return fmt.Errorf("reference %q: tpm.pcrs[%d]: %d bytes, want 32 (SHA-256)", r.Profile, i, len(v))
			}
		}
		return nil
	case PlatformSNP:
		s := r.SNP
		if s == nil {
			return fmt.Errorf("reference %q: platform sev-snp without a sev_snp section", r.Profile)
		}
		if s.Product == "" {
			return fmt.Errorf("reference %q: sev_snp.product: empty", r.Profile)
		}
		return checkSizes(r.Profile, "sev_snp", []sized{{"measurement", s.Measurement, 48, false},
			{"host_data", s.HostData, 32, true}, {"family_id", s.FamilyID, 16, true},
			{"image_id", s.ImageID, 16, true}})
	case PlatformTDX:
		t := r.TDX
		if t == nil {
			return fmt.Errorf("reference %q: platform tdx without a tdx section", r.Profile)
		}
		fields := []sized{{"mrtd", t.MRTD, 48, false}, {"mrconfigid", t.MRConfigID, 48, true},
			{"mrowner", t.MROwner, 48, true}, {"mrownerconfig", t.MROwnerConfig, 48, true},
			{"td_attributes", t.TDAttributes, 8, false}, {"xfam", t.XFAM, 8, false},
			{"min_tee_tcb_svn", t.MinTEETCBSVN, 16, false}}
		for i, v := range t.RTMR {
			fields = append(fields, sized{fmt.Sprintf("rtmr[%d]", i), v, 48, false})
		}
		for i, v := range t.MRSEAM {
			fields = append(fields, sized{fmt.Sprintf("mrseam[%d]", i), v, 48, false})
		}
		return checkSizes(r.Profile, "tdx", fields)
	}
	return nil
}

// sized is a fixed-size field of a reference; optional ones may be empty.
type sized struct {
	name     string
	v        []byte
	n        int
	optional bool
}

func checkSizes(profile, section string, fields []sized) error {
	for _, f := range fields {
		if (len(f.v) == 0 && !f.optional) || (len(f.v) != 0 && len(f.v) != f.n) {
			return fmt.Errorf("reference %q: %s.%s: %d bytes, want %d", profile, section, f.name, len(f.v), f.n)
		}
	}
	return nil
}
