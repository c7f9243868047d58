package snp

// Exported for the external tests only.
var (
	LibraryOptions = libraryOptions
	ParseCertTable = parseCertTable
	PickTransport  = pickTransport
	ParseEvidence  = parseEvidence
)
