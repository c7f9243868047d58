// Package tdx gathers (attester.go) and verifies (verifier.go) Intel TDX evidence: a quote v4, its collateral and the CC event log.
// It is not a TDX driver or a collateral fetcher: quotes come through a Transport, collateral from an offline Bundle.
package tdx
