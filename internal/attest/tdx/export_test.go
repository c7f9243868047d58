package tdx

// CachedFacts is the number of collateral signatures the verifier holds.
func (v *Verifier) CachedFacts() int {
	v.sigs.mu.Lock()
	defer v.sigs.mu.Unlock()
	return len(v.sigs.facts)
}
