module wit_component

go 1.27.1

require go.bytecodealliance.org/pkg v0.4.0

// The runtime package of the bindings, written by `host bindgen`: builds offline.
replace go.bytecodealliance.org/pkg => ./witpkg
