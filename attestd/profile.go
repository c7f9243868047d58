package attestd

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
	"github.com/palisade-cc/palisade/internal/manifest"
)

// ErrNoProfile is returned when no reference of the manifest matches what
// this machine measures: keyd would deny it, so attestd does not try.
var ErrNoProfile = errors.New("this machine matches no profile of the manifest")

// SEV-SNP ATTESTATION_REPORT layout (SEV-SNP ABI §7.3, Table 23).
const (
	snpReportSize     = 0x4A0
	snpFamilyIDOff    = 0x10
	snpImageIDOff     = 0x20
	snpMeasurementOff = 0x90
	snpHostDataOff    = 0xC0
)

// snpValues reads the launch values of a raw report. It checks only the
// size: the values pick a profile and are not trusted for anything else.
func snpValues(rep []byte) (map[string][]byte, error) {
	if len(rep) != snpReportSize {
		return nil, fmt.Errorf("sev-snp report: %d bytes, want %d", len(rep), snpReportSize)
	}
	return map[string][]byte{
		"family_id":   bytes.Clone(rep[snpFamilyIDOff : snpFamilyIDOff+16]),
		"image_id":    bytes.Clone(rep[snpImageIDOff : snpImageIDOff+16]),
		"measurement": bytes.Clone(rep[snpMeasurementOff : snpMeasurementOff+48]),
		"host_data":   bytes.Clone(rep[snpHostDataOff : snpHostDataOff+32]),
	}, nil
}

// tdxValues reads MRTD, RTMR0-3 and the owner-set registers of a quote v4.
func tdxValues(raw []byte) (map[string][]byte, error) {
	q, err := tdx.ParseQuote(raw)
	if err != nil {
		return nil, fmt.Errorf("tdx quote: %w", err)
	}
	b := q.GetTdQuoteBody()
	if b == nil || len(b.GetRtmrs()) != 4 {
		return nil, errors.New("tdx quote: no TD quote body with 4 RTMRs")
	}
	v := map[string][]byte{"mrtd": b.GetMrTd(), "mrconfigid": b.GetMrConfigId(), "mrowner": b.GetMrOwner(),
		"mrownerconfig": b.GetMrOwnerConfig()}
	for i, r := range b.GetRtmrs() {
		v[fmt.Sprintf("rtmr%d", i)] = r
	}
	return v, nil
}

// maxPCRReads bounds the PCR_Read round trips: each returns at most 8 of the
// 24 PCRs (TPM 2.0 Part 3 §22.4), so 3 suffice; a TPM that returns fewer
// does not loop attestd forever.
const maxPCRReads = 8

// tpmValues reads the SHA-256 PCRs that refs pin.
func tpmValues(rw io.ReadWriter, refs []*attest.Reference) (map[string][]byte, error) {
	var want []int
	for _, r := range refs {
		if r.TPM != nil {
			for p := range r.TPM.PCRs {
				want = append(want, p)
			}
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)
	t := transport.FromReadWriter(rw)
	out := map[string][]byte{}
	for i := 0; i < maxPCRReads && len(out) < len(want); i++ {
		sel := make([]byte, 3)
		for _, p := range want {
			if out[pcrName(p)] == nil && p >= 0 && p < 24 {
				sel[p/8] |= 1 << (p % 8)
			}
		}
		r, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
			{Hash: tpm2.TPMAlgSHA256, PCRSelect: sel}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("tpm PCR_Read: %w", err)
		}
		if len(r.PCRSelectionOut.PCRSelections) != 1 {
			return nil, errors.New("tpm PCR_Read: no SHA-256 selection returned")
		}
		got := r.PCRSelectionOut.PCRSelections[0].PCRSelect
		d := 0
		for p := 0; p < len(got)*8 && d < len(r.PCRValues.Digests); p++ {
			if got[p/8]&(1<<(p%8)) != 0 {
				out[pcrName(p)] = r.PCRValues.Digests[d].Buffer
				d++
			}
		}
	}
	return out, nil
}

func pcrName(p int) string { return fmt.Sprintf("pcr%02d", p) }

// expectedValues are the values ref pins, by the names the machine readers
// use; absent optional fields mean zero, as the verifiers read them.
func expectedValues(ref *attest.Reference) map[string][]byte {
	or := func(b []byte, n int) []byte {
		if len(b) == 0 {
			return make([]byte, n)
		}
		return b
	}
	v := map[string][]byte{}
	switch {
	case ref.TPM != nil:
		for p, d := range ref.TPM.PCRs {
			v[pcrName(p)] = d
		}
	case ref.SNP != nil:
		v["measurement"] = ref.SNP.Measurement
		v["host_data"] = or(ref.SNP.HostData, 32)
		v["family_id"] = or(ref.SNP.FamilyID, 16)
		v["image_id"] = or(ref.SNP.ImageID, 16)
	case ref.TDX != nil:
		v["mrtd"] = ref.TDX.MRTD
		for i, r := range ref.TDX.RTMR {
			v[fmt.Sprintf("rtmr%d", i)] = r
		}
		v["mrconfigid"] = or(ref.TDX.MRConfigID, 48)
		v["mrowner"] = or(ref.TDX.MROwner, 48)
		v["mrownerconfig"] = or(ref.TDX.MROwnerConfig, 48)
	}
	return v
}

// firstDifference names the first value (in name order) in which have
// differs from ref, or "" when all match.
func firstDifference(ref *attest.Reference, have map[string][]byte) string {
	want := expectedValues(ref)
	names := make([]string, 0, len(want))
	for n := range want {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		h, ok := have[n]
		if !ok {
			return fmt.Sprintf("%s: not measured here, want %s", n, hex.EncodeToString(want[n]))
		}
		if !bytes.Equal(h, want[n]) {
			return fmt.Sprintf("%s: have %s, want %s", n, hex.EncodeToString(h), hex.EncodeToString(want[n]))
		}
	}
	return ""
}

// candidates are the manifest's node references of platform p, by profile
// name, so the choice is the same on every boot.
func candidates(m *manifest.Manifest, p attest.Platform) []*attest.Reference {
	var out []*attest.Reference
	for i := range m.References {
		if m.References[i].Platform == p {
			out = append(out, &m.References[i])
		}
	}
	slices.SortFunc(out, func(a, b *attest.Reference) int { return strings.Compare(a.Profile, b.Profile) })
	return out
}

// PickProfile returns the first node reference (by profile name) of the
// machine's platform whose values the machine measures now. With none it
// logs every candidate with its first differing value and returns
// ErrNoProfile naming them, together with the first candidate (nil when the
// manifest has no profile of this platform at all).
func PickProfile(ctx context.Context, m *manifest.Manifest, mach *Machine, log *slog.Logger) (*attest.Reference, error) {
	cands := candidates(m, mach.Platform)
	if len(cands) == 0 {
		return nil, fmt.Errorf("%w: the manifest (image %s) has no %s profile", ErrNoProfile, m.ImageVersion, mach.Platform)
	}
	have, err := mach.measure(ctx, cands)
	if err != nil {
		return nil, fmt.Errorf("read this machine's measurements: %w", err)
	}
	var diffs []string
	for _, r := range cands {
		d := firstDifference(r, have)
		if d == "" {
			log.Info("profile chosen", "profile", r.Profile, "platform", r.Platform, "candidates", len(cands))
			return r, nil
		}
		log.Warn("profile does not match this machine", "profile", r.Profile, "first_difference", d)
		diffs = append(diffs, fmt.Sprintf("%s (%s)", r.Profile, d))
	}
	// The first candidate comes back with the error: the caller still asks
	// keyd with it, so the verdict on a machine that measures differently
	// (a tampered UKI) is keyd's, recorded in keyd's log and metrics, not
	// only the node's own word.
	return cands[0], fmt.Errorf("%w (image %s, %s): %s", ErrNoProfile, m.ImageVersion, mach.Platform, strings.Join(diffs, "; "))
}

// keydReference returns the manifest's keyd reference of profile.
func keydReference(m *manifest.Manifest, profile string) (*attest.Reference, error) {
	for i := range m.Keyd {
		if m.Keyd[i].Profile == profile {
			return &m.Keyd[i], nil
		}
	}
	return nil, attest.Denyf(attest.ClassPolicy, "keyd profile %q is not in the manifest's keyd section", profile)
}
