package cvmport_test

import (
	"github.com/palisade-cc/palisade/internal/attest/cvmport"
	"github.com/palisade-cc/palisade/internal/attest/snp"
	"github.com/palisade-cc/palisade/internal/attest/tdx"
)

// The client is the platforms' transport: attestd's code path is the
// hardware path apart from it.
var (
	_ snp.Transport = (*cvmport.Client)(nil)
	_ tdx.Transport = (*cvmport.Client)(nil)
)
