// Package archtest holds only a test: it checks the import rules of
// ARCHITECTURE.md §2 over every package of the module.
package archtest
