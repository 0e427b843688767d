package probe

import "github.com/sockbridge/sockbridge/pkg/sockdiag"

// probeFlowListing checks that sock_diag lists the sockets that carry
// socket storage, which `sockbridge maps` and the leak tests use to show
// live flows. Optional: without it the datapath runs and only the listing
// is missing.
func probeFlowListing() Feature {
	f := Feature{Name: "flow_listing", Kind: KindKernel, MinKernel: "5.2", NeededFor: NeedNone}
	err := sockdiag.ProbeSelf()
	if err == nil {
		f.Detail = "sock_diag lists the sockets carrying socket storage (INET_DIAG_REQ_SK_BPF_STORAGES)"
	}
	return result(f, err)
}
