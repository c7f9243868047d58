package cvm

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"unicode/utf16"

	"github.com/palisade-cc/palisade/internal/attest"
	"github.com/palisade-cc/palisade/internal/attest/tdx/tdxtest"
	"github.com/palisade-cc/palisade/internal/cvm/ovmf"
	"github.com/palisade-cc/palisade/internal/cvm/reference"
	cvmtdx "github.com/palisade-cc/palisade/internal/cvm/tdx"
	"github.com/palisade-cc/palisade/internal/measure"
)

// ccelArea is the size of the CC event log area TDVF reserves (ACPI CCEL
// table LAML, OvmfPkg TdxDxe: 64 KiB); Linux exposes all of it, so the log
// the guest reads ends in 0xff padding.
const ccelArea = 64 << 10

// CCEL event types (TCG PC Client PFP §10.4.1) besides tdxtest's.
const (
	evPlatformConfigFlags   = 0x0000000a
	evEFIVariableBoot       = 0x80000002
	evEFIPlatformFirmware2  = 0x8000000a
	evEFIHandoffTables2     = 0x8000000b
	efiGlobalVariable       = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
	efiImageSecurityDatabas = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
)

// MR indices of the CC event log (UEFI 2.10 §38.4.1): 1 is RTMR0, ….
const (
	mrRTMR0 = 1 + iota
	mrRTMR1
	mrRTMR2
)

type tdxState struct {
	fx   *tdxtest.Fixture
	body tdxtest.Body // MRTD and RTMRs set; REPORT_DATA per request
	ccel []byte
}

// NewTDX measures a TDX launch: MRTD is internal/cvm/tdx.MRTD(firmware); the
// CC event log is synthesised (RTMR0: the emulated TDVF configuration, see
// docs/harness-cvm.md; RTMR1/RTMR2: exactly images/build's events for the
// UKI) and the quoted RTMRs are its replay. Quotes are signed by fx's
// PCK/QE chain, with fx's TD attributes (debug off, SEPT_VE_DISABLE), XFAM,
// TEE_TCB_SVN and MRSEAM.
func NewTDX(l Launch, fx *tdxtest.Fixture) (*Emulator, error) {
	if fx == nil {
		return nil, fmt.Errorf("tdx emulator: no test fixture")
	}
	e, fw, uki, err := newEmulator(l, attest.PlatformTDX)
	if err != nil {
		return nil, fmt.Errorf("tdx emulator: %w", err)
	}
	mrtd, err := cvmtdx.MRTD(fw)
	if err != nil {
		return nil, fmt.Errorf("tdx emulator: launch.firmware: %w", err)
	}
	log, err := eventLog(fw, uki, e.shape, l.SecureBoot)
	if err != nil {
		return nil, fmt.Errorf("tdx emulator: %w", err)
	}
	body := fx.Body
	if body.TDAttributes[0]&1 != 0 {
		return nil, fmt.Errorf("tdx emulator: fixture body has TD_ATTRIBUTES.DEBUG set")
	}
	copy(body.MRTD[:], mrtd)
	body.RTMR = log.RTMR()
	body.ReportData = [64]byte{}
	pad := max(0, ccelArea-len(log.Bytes(0)))
	e.tdx = &tdxState{fx: fx, body: body, ccel: log.Bytes(pad)}
	e.log.Info("cvm emulator: tdx measurement", "mrtd", fmt.Sprintf("%x", mrtd),
		"rtmr0", fmt.Sprintf("%x", body.RTMR[0]), "rtmr1", fmt.Sprintf("%x", body.RTMR[1]))
	return e, nil
}

func (s *tdxState) quote(reportData [64]byte) ([]byte, error) {
	b := s.body
	b.ReportData = reportData
	q, err := s.fx.Signer.Quote(b)
	if err != nil {
		return nil, fmt.Errorf("quote: sign: %w", err)
	}
	return q, nil
}

// TDXBoot is the reference-boot record images/build wants for this emulated
// TD (RTMR0, TD attributes, XFAM, TEE_TCB_SVN floor, MRSEAM), what
// `images build --tdx-boots` reads; MRTD and RTMR1-3 are left for the build
// to compute. For an SEV-SNP emulator it is the zero value.
func (e *Emulator) TDXBoot() reference.TDXBoot {
	if e.tdx == nil {
		return reference.TDXBoot{}
	}
	b := e.tdx.body
	return reference.TDXBoot{Shape: e.shape.Name, SecureBoot: e.l.SecureBoot, Reference: attest.TDXReference{
		RTMR:          [4]attest.HexBytes{bytes.Clone(b.RTMR[0][:])},
		TDAttributes:  bytes.Clone(b.TDAttributes[:]),
		XFAM:          bytes.Clone(b.XFAM[:]),
		SeptVEDisable: b.TDAttributes[3]&0x10 != 0, // TD_ATTRIBUTES bit 28
		MinTEETCBSVN:  bytes.Clone(b.TeeTCBSVN[:]),
		MRSEAM:        []attest.HexBytes{bytes.Clone(b.MRSEAM[:])},
	}}
}

// reference is what this TD quotes, as a reference of images/build's
// profile name.
func (s *tdxState) reference(e *Emulator) attest.Reference {
	r := e.TDXBoot().Reference
	r.MRTD = bytes.Clone(s.body.MRTD[:])
	for i := range r.RTMR {
		r.RTMR[i] = bytes.Clone(s.body.RTMR[i][:])
	}
	return attest.Reference{Profile: reference.TDXProfile(e.fw, e.shape.Name, e.l.SecureBoot, e.l.image()),
		Platform: attest.PlatformTDX, TDX: &r}
}

// eventLog synthesises the CC event log of a TDVF boot of uki.
//
// RTMR0 (PCR 1 and 7) is the emulated configuration, deterministic from the
// firmware and the shape; a real TDVF measures there the TD HOB QEMU built,
// the CFV (its UEFI variable store), the ACPI tables QEMU installs, the Secure
// Boot variables, the boot variables and the PCR 1/7 separators. The emulator
// logs the same kinds of events in that order, with digests over the CFV
// bytes of the firmware and over canonical descriptions of the shape where
// real TDVF hashes VMM-built structures it does not build.
//
// RTMR1 and RTMR2 are images/build's prediction for the UKI
// (internal/cvm/tdx.RTMR1Events and RTMR2Events with reference.ImageCC), so the
// emulator shows a verifier exactly what the reference predicts.
func eventLog(fw, uki []byte, sh reference.Shape, secureBoot bool) (*tdxtest.EventLog, error) {
	l := tdxtest.NewEventLog()
	im, err := ovmf.Parse(fw)
	if err != nil {
		return nil, fmt.Errorf("launch.firmware: %w", err)
	}
	secs, err := im.TDXMetadata()
	if err != nil {
		return nil, fmt.Errorf("launch.firmware: %w", err)
	}
	var cfv, hob *ovmf.TDXSection
	for i := range secs {
		switch secs[i].Type {
		case ovmf.TDXCFV:
			cfv = &secs[i]
		case ovmf.TDXTDHOB:
			hob = &secs[i]
		}
	}
	if cfv == nil || hob == nil {
		return nil, fmt.Errorf("launch.firmware: TDX metadata has no CFV or TD HOB section")
	}
	// TD HOB (EV_EFI_HANDOFF_TABLES2, TdTcg2Dxe): where it lies and the
	// shape QEMU describes in it.
	hobDesc := fmt.Appendf(nil, "palisade-cvm TD HOB v1 gpa=%#x size=%#x vcpus=%d", hob.MemoryAddress, hob.MemoryDataSize, sh.VCPUs)
	l.Append(mrRTMR0, evEFIHandoffTables2, sha512.Sum384(hobDesc), tablePointers("TdHob", hob.MemoryAddress))
	// CFV (EV_EFI_PLATFORM_FIRMWARE_BLOB2 "CFV"): its bytes in the image.
	end := uint64(cfv.DataOffset) + uint64(cfv.RawDataSize)
	if end > uint64(len(fw)) {
		return nil, fmt.Errorf("launch.firmware: CFV section ends at %#x, past the image", end)
	}
	l.Append(mrRTMR0, evEFIPlatformFirmware2, sha512.Sum384(fw[cfv.DataOffset:end]),
		firmwareBlob("CFV", cfv.MemoryAddress, uint64(cfv.RawDataSize)))
	// ACPI tables (EV_PLATFORM_CONFIG_FLAGS "ACPI DATA"): the MADT lists
	// the vCPUs of the shape.
	l.Measure(mrRTMR0, evPlatformConfigFlags, fmt.Appendf(nil, "ACPI DATA palisade-cvm vcpus=%d cpu=%s", sh.VCPUs, sh.VCPUType))
	// Secure Boot policy (PCR 7): SecureBoot, PK, KEK, db, dbx; no keys are
	// enrolled in the emulated TD (with Secure Boot on, only the state
	// differs: the emulator has no keys to enroll).
	sb := byte(0)
	if secureBoot {
		sb = 1
	}
	for _, v := range []struct {
		name, guid string
		data       []byte
	}{{"SecureBoot", efiGlobalVariable, []byte{sb}}, {"PK", efiGlobalVariable, nil}, {"KEK", efiGlobalVariable, nil},
		{"db", efiImageSecurityDatabas, nil}, {"dbx", efiImageSecurityDatabas, nil}} {
		vd, err := variableData(v.guid, v.name, v.data)
		if err != nil {
			return nil, err
		}
		l.Measure(mrRTMR0, tdxtest.EvEFIVariableDriverCf, vd)
	}
	l.Measure(mrRTMR0, tdxtest.EvSeparator, make([]byte, 4)) // PCR 7
	// Boot variables (PCR 1): BootOrder with one entry, the network boot
	// option; edk2 hashes the variable's data for EV_EFI_VARIABLE_BOOT.
	order := []byte{0, 0}
	vd, err := variableData(efiGlobalVariable, "BootOrder", order)
	if err != nil {
		return nil, err
	}
	l.Append(mrRTMR0, evEFIVariableBoot, sha512.Sum384(order), vd)
	l.Measure(mrRTMR0, tdxtest.EvSeparator, make([]byte, 4)) // PCR 1

	// RTMR1: images/build's events. RTMR1Events returns, in order, the
	// ReadyToBoot action, a separator, one or two Authenticode digests
	// (UKI, inner kernel with Secure Boot off) and two ExitBootServices
	// actions; the event data are what TdTcg2Dxe logs with them.
	ev, err := cvmtdx.RTMR1Events(uki, secureBoot)
	if err != nil {
		return nil, fmt.Errorf("launch.uki: %w", err)
	}
	if len(ev) < 5 {
		return nil, fmt.Errorf("launch.uki: %d RTMR1 events, want at least 5", len(ev))
	}
	actions := map[int]string{0: "Calling EFI Application from Boot Option",
		len(ev) - 2: "Exit Boot Services Invocation", len(ev) - 1: "Exit Boot Services Returned with Success"}
	for i, d := range ev {
		var typ uint32
		var data []byte
		switch {
		case actions[i] != "":
			typ, data = tdxtest.EvEFIAction, []byte(actions[i])
		case i == 1:
			typ, data = tdxtest.EvSeparator, make([]byte, 4)
		default:
			typ, data = tdxtest.EvEFIBootServicesApp, imageLoadEvent(uint64(len(uki)))
		}
		if typ != tdxtest.EvEFIBootServicesApp {
			// Self-check: these events' digests are of their data.
			if s := sha512.Sum384(data); !bytes.Equal(s[:], d) {
				return nil, fmt.Errorf("launch.uki: RTMR1 event %d is not %q", i, data)
			}
		}
		l.Append(mrRTMR1, typ, [48]byte(d), data)
	}
	// RTMR2: what the stub and kernel extend through the CC protocol
	// (nothing for today's image, reference.ImageCC).
	p, err := measure.ParsePE(uki)
	if err != nil {
		return nil, fmt.Errorf("launch.uki: %w", err)
	}
	k := p.Section(".linux")
	if k == nil {
		return nil, fmt.Errorf("launch.uki: no .linux section")
	}
	for i, d := range cvmtdx.RTMR2Events(p, measure.InspectKernel(p.Memory(k)), reference.ImageCC) {
		l.Append(mrRTMR2, tdxtest.EvIPL, [48]byte(d), fmt.Appendf(nil, "palisade-cvm RTMR2 event %d", i))
	}
	return l, nil
}

// variableData is UEFI_VARIABLE_DATA (TCG PC Client PFP §10.4.2.1): GUID,
// u64 name length in characters, u64 data length, UTF-16LE name, data.
func variableData(guid, name string, data []byte) ([]byte, error) {
	g, err := ovmf.ParseGUID(guid)
	if err != nil {
		return nil, err
	}
	u := utf16.Encode([]rune(name))
	b := append([]byte(nil), g[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(len(u)))
	b = binary.LittleEndian.AppendUint64(b, uint64(len(data)))
	for _, c := range u {
		b = binary.LittleEndian.AppendUint16(b, c)
	}
	return append(b, data...), nil
}

// tablePointers is UEFI_HANDOFF_TABLE_POINTERS2 (PFP §10.4.2.5) with one
// table: description, count, {VendorGuid (zero here), VendorTable}.
func tablePointers(desc string, at uint64) []byte {
	b := append([]byte{byte(len(desc))}, desc...)
	b = binary.LittleEndian.AppendUint64(b, 1)
	b = append(b, make([]byte, 16)...)
	return binary.LittleEndian.AppendUint64(b, at)
}

// firmwareBlob is UEFI_PLATFORM_FIRMWARE_BLOB2 (PFP §10.4.2.3).
func firmwareBlob(desc string, base, length uint64) []byte {
	b := append([]byte{byte(len(desc))}, desc...)
	b = binary.LittleEndian.AppendUint64(b, base)
	return binary.LittleEndian.AppendUint64(b, length)
}

// imageLoadEvent is UEFI_IMAGE_LOAD_EVENT (PFP §10.4.2.2) without a device
// path: the image's digest is Authenticode, not of this data.
func imageLoadEvent(length uint64) []byte {
	var b []byte
	for _, v := range []uint64{0, length, 0, 0} { // location, length, link time, device path length
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}
