package hostrun

// Mount binds a host file or directory at Target inside the container.
type Mount struct {
	Source   string `json:"source"` // host path
	Target   string `json:"target"` // absolute path in the container
	ReadOnly bool   `json:"readOnly,omitempty"`
}
