package tdx

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/google/go-tdx-guest/pcs"
	pb "github.com/google/go-tdx-guest/proto/tdx"

	"github.com/palisade-cc/palisade/internal/attest"
)

// tcbStatus rates the platform per the TCB info (Intel TDX DCAP Quote
// Verification, "TDX TCB status evaluation"; PCS API "TDX TCB Info V3"):
//
//  1. The TDX module (tdxModule): MRSIGNERSEAM must equal its mrsigner and
//     SEAMATTRIBUTES & attributesMask its attributes.
//  2. The first TCB level (levels are sorted from newest) whose 16 SGX
//     component SVNs and PCESVN are ≤ the PCK certificate's and whose 16 TDX
//     component SVNs are ≤ TEE_TCB_SVN (components 0 and 1 skipped when
//     TEE_TCB_SVN[1] > 0, as they then describe the module) is the match.
//  3. When TEE_TCB_SVN[1] > 0 (a TDX module with an identity), the module
//     identity "TDX_<TEE_TCB_SVN[1] hex>" must exist and its first level with
//     isvsvn ≤ TEE_TCB_SVN[0] is the module's status.
//
// Both statuses must be acceptable. It returns the platform level's status.
func (v *Verifier) tcbStatus(info *pcs.TcbInfo, body *pb.TDQuoteBody, ext *pcs.PckExtensions) (string, error) {
	m := info.TdxModule
	if !bytes.Equal(m.Mrsigner.Bytes, body.GetMrSignerSeam()) {
		return "", attest.Denyf(attest.ClassTCB, "MRSIGNERSEAM %x is not the TDX module signer %x of the TCB info",
			body.GetMrSignerSeam(), m.Mrsigner.Bytes)
	}
	if err := masked("SEAMATTRIBUTES", body.GetSeamAttributes(), m.AttributesMask.Bytes, m.Attributes.Bytes); err != nil {
		return "", attest.Deny(attest.ClassTCB, err)
	}
	svn := body.GetTeeTcbSvn()
	var level *pcs.TcbLevel
	for i := range info.TcbLevels {
		l := &info.TcbLevels[i]
		if componentsAtLeast(ext.TCB.CPUSvnComponents, l.Tcb.SgxTcbcomponents, 0) &&
			ext.TCB.PCESvn >= l.Tcb.Pcesvn &&
			componentsAtLeast(svn, l.Tcb.TdxTcbcomponents, skipFor(svn)) {
			level = l
			break
		}
	}
	if level == nil {
		return "", attest.Denyf(attest.ClassTCB, "no TCB level of FMSPC %s matches TEE_TCB_SVN %x, PCESVN %d, CPUSVN %x",
			ext.FMSPC, svn, ext.TCB.PCESvn, ext.TCB.CPUSvnComponents)
	}
	if err := v.acceptStatus("TDX TCB", level.TcbStatus, level.AdvisoryIDs); err != nil {
		return "", err
	}
	if svn[1] > 0 {
		id := "TDX_" + hex.EncodeToString(svn[1:2])
		var mi *pcs.TdxModuleIdentity
		for i := range info.TdxModuleIdentities {
			if info.TdxModuleIdentities[i].ID == id {
				mi = &info.TdxModuleIdentities[i]
			}
		}
		if mi == nil {
			return "", attest.Denyf(attest.ClassTCB, "TCB info has no TDX module identity %s", id)
		}
		if !bytes.Equal(mi.Mrsigner.Bytes, body.GetMrSignerSeam()) {
			return "", attest.Denyf(attest.ClassTCB, "MRSIGNERSEAM %x is not the signer of TDX module %s", body.GetMrSignerSeam(), id)
		}
		if err := masked("SEAMATTRIBUTES ("+id+")", body.GetSeamAttributes(), mi.AttributesMask.Bytes, mi.Attributes.Bytes); err != nil {
			return "", attest.Deny(attest.ClassTCB, err)
		}
		var ml *pcs.TcbLevel
		for i := range mi.TcbLevels {
			if uint32(svn[0]) >= mi.TcbLevels[i].Tcb.Isvsvn {
				ml = &mi.TcbLevels[i]
				break
			}
		}
		if ml == nil {
			return "", attest.Denyf(attest.ClassTCB, "TDX module %s: no TCB level for SVN %d", id, svn[0])
		}
		if err := v.acceptStatus("TDX module "+id, ml.TcbStatus, ml.AdvisoryIDs); err != nil {
			return "", err
		}
	}
	return string(level.TcbStatus), nil
}

func skipFor(teeTCBSVN []byte) int {
	if len(teeTCBSVN) > 1 && teeTCBSVN[1] > 0 {
		return 2
	}
	return 0
}

// componentsAtLeast reports whether have[i] ≥ want[i].Svn for i ≥ skip; a
// level with another number of components never matches.
func componentsAtLeast(have []byte, want []pcs.TcbComponent, skip int) bool {
	if len(have) != 16 || len(want) != 16 {
		return false
	}
	for i := skip; i < 16; i++ {
		if have[i] < want[i].Svn {
			return false
		}
	}
	return true
}

func masked(what string, value, mask, want []byte) error {
	if len(value) != len(mask) || len(mask) != len(want) {
		return fmt.Errorf("%s: %d bytes, collateral mask %d and value %d", what, len(value), len(mask), len(want))
	}
	for i := range value {
		if value[i]&mask[i] != want[i] {
			return fmt.Errorf("%s %x & mask %x ≠ %x", what, value, mask, want)
		}
	}
	return nil
}

// acceptStatus accepts UpToDate and the statuses configured in AcceptTCB.
func (v *Verifier) acceptStatus(what string, s pcs.TcbComponentStatus, advisories []string) error {
	if s == pcs.TcbComponentStatusUpToDate {
		return nil
	}
	for _, a := range v.AcceptTCB {
		if string(s) == a && s != pcs.TcbComponentStatusRevoked {
			return nil
		}
	}
	return attest.Denyf(attest.ClassTCB, "%s status %q not accepted (advisories %v)", what, s, advisories)
}

// checkQE checks the QE report against the QE identity (DCAP QVL "QE
// identity verification"): MISCSELECT and ATTRIBUTES under their masks,
// MRSIGNER and ISVPRODID exactly (a mismatch means another enclave produced
// the report: chain), then the QE TCB status by ISVSVN (tcb).
func (v *Verifier) checkQE(qe *pb.EnclaveReport, id *pcs.EnclaveIdentity) error {
	if len(id.MiscselectMask.Bytes) != 4 || len(id.Miscselect.Bytes) != 4 {
		return attest.Denyf(attest.ClassCollateral, "QE identity: miscselect and mask must be 4 bytes")
	}
	mask := binary.LittleEndian.Uint32(id.MiscselectMask.Bytes)
	if qe.GetMiscSelect()&mask != binary.LittleEndian.Uint32(id.Miscselect.Bytes) {
		return attest.Denyf(attest.ClassChain, "QE report MISCSELECT %#x does not match the QE identity", qe.GetMiscSelect())
	}
	if err := masked("QE report ATTRIBUTES", qe.GetAttributes(), id.AttributesMask.Bytes, id.Attributes.Bytes); err != nil {
		return attest.Deny(attest.ClassChain, err)
	}
	if !bytes.Equal(qe.GetMrSigner(), id.Mrsigner.Bytes) {
		return attest.Denyf(attest.ClassChain, "QE report MRSIGNER %x is not the QE identity's %x", qe.GetMrSigner(), id.Mrsigner.Bytes)
	}
	if qe.GetIsvProdId() != uint32(id.IsvProdID) {
		return attest.Denyf(attest.ClassChain, "QE report ISVPRODID %d, QE identity says %d", qe.GetIsvProdId(), id.IsvProdID)
	}
	for _, l := range id.TcbLevels {
		if l.Tcb.Isvsvn <= qe.GetIsvSvn() {
			return v.acceptStatus("QE TCB", l.TcbStatus, l.AdvisoryIDs)
		}
	}
	return attest.Denyf(attest.ClassTCB, "QE ISVSVN %d: no TCB level in the QE identity", qe.GetIsvSvn())
}
