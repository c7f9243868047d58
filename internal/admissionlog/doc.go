// Package admissionlog is the admission log's format and its client-side
// checks: records (canonical JSON leaves), signed checkpoints (C2SP
// tlog-checkpoint in a note), and inclusion and consistency proofs over
// RFC 6962 trees. keyd writes the log (keyd/auditlog); the owner's verifier
// checks it with the same code.
//
// It is not the log: it stores nothing and never writes one.
package admissionlog
