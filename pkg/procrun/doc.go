// Package procrun runs a container with process isolation: it claims the
// run so that gc can reap it if this process dies, creates the container
// and mounts its root file system on the host, writes the OCI bundle over
// it, runs it with the host's OCI runtime (package ociruntime), supervises
// it (forwards signals, kills it when it outlives the stop timeout after an
// interrupt, follows the caller's terminal size) and tears it all down. It
// also reaps what runs that died before their teardown left: ReapDead.
//
// The claim is the same for every run, in a utility VM too (package vmrun
// runs those): Create claims and creates a run's container, End removes it
// and drops the claim, and Supervise supervises a started container of
// either kind.
//
// The claim: a run holds a lock on <root>/runs/<name>.lock from before it
// creates its container until its teardown is done. The kernel drops the
// lock when the run dies, even by SIGKILL, so ReapDead takes a free lock as
// "the run is gone" and removes its container (unmounting it first). A dead
// run's utility VM, if any, is reaped by uvm.GC.
package procrun
