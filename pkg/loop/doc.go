// Package loop attaches regular files to Linux loop block devices.
//
// Devices are configured in one LOOP_CONFIGURE call with the autoclear flag,
// so the kernel detaches a device by itself when its last user (a mount or an
// open file) goes away; a process that dies between attach and mount does not
// leak the device.
package loop
