package uvm

// TplConfig gives the external tests a config in the shared template root.
var TplConfig = tplConfig
