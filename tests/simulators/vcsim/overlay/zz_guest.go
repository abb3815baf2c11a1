// Added to package simulator at build time (go build -overlay): VMware Tools state that follows
// the power state, and ShutdownGuest that behaves like a real guest (needs running tools, returns
// at once, the VM powers off after a short delay).
//
// Also config.changeVersion (a timestamp, checked against ConfigSpec.changeVersion like vSphere)
// and no power-on while an export lease is open.
//
// build.sh renames the stock (*VirtualMachine).ShutdownGuest to shutdownGuestStock,
// (*powerVMTask).Run to runStock and (*VirtualMachine).configure to configureStock in a
// generated copy of virtual_machine.go.

package simulator

import (
	"log"
	"os/exec"
	"sync"
	"time"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// simVM holds what the simulator needs per VM beyond the vSphere object.
type simVM struct {
	noTools    bool     // VMware Tools not installed
	diskFiles  []string // files served for the VM's disks in device order (stream-optimized VMDKs)
	onPowerOff []string // command run to completion before the VM powers off (config on_power_off)
}

// runPowerOffHook runs the VM's on_power_off command, if any, and logs its outcome; a failing hook
// does not stop the power off (a real guest that fails to flush still powers off).
func runPowerOffHook(vm *VirtualMachine) {
	argv := simVMFor(vm.Self).onPowerOff
	if len(argv) == 0 {
		return
	}
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		log.Printf("vm %s: on_power_off %v failed: %v\n%s", vm.Name, argv, err, out)
		return
	}
	log.Printf("vm %s: on_power_off %v done", vm.Name, argv)
}

// exporting counts the open export leases per VM moref value.
var exporting = struct {
	sync.Mutex
	n map[string]int
}{n: map[string]int{}}

func exportStarted(vm types.ManagedObjectReference) {
	exporting.Lock()
	defer exporting.Unlock()
	exporting.n[vm.Value]++
}

func exportEnded(vm types.ManagedObjectReference) {
	exporting.Lock()
	defer exporting.Unlock()
	if exporting.n[vm.Value]--; exporting.n[vm.Value] <= 0 {
		delete(exporting.n, vm.Value)
	}
}

func isExporting(vm types.ManagedObjectReference) bool {
	exporting.Lock()
	defer exporting.Unlock()
	return exporting.n[vm.Value] > 0
}

// configure wraps the stock one: a ConfigSpec.changeVersion that is not the VM's current one fails
// with ConcurrentAccess, and every change gives the VM a new config.changeVersion.
func (vm *VirtualMachine) configure(spec *types.VirtualMachineConfigSpec) types.BaseMethodFault {
	if spec.ChangeVersion != "" && spec.ChangeVersion != vm.Config.ChangeVersion {
		return &types.ConcurrentAccess{}
	}
	if err := vm.configureStock(spec); err != nil {
		return err
	}
	vm.Config.ChangeVersion = vm.Config.Modified.UTC().Format("2006-01-02T15:04:05.000000Z")
	return nil
}

var simVMs = struct {
	sync.Mutex
	m           map[string]*simVM // by VM moref value
	defaultDisk string            // served for disks without their own file
}{m: map[string]*simVM{}}

func simVMFor(ref types.ManagedObjectReference) simVM {
	simVMs.Lock()
	defer simVMs.Unlock()
	if v, ok := simVMs.m[ref.Value]; ok {
		return *v
	}
	return simVM{}
}

func setSimVM(ref types.ManagedObjectReference, v simVM) {
	simVMs.Lock()
	defer simVMs.Unlock()
	simVMs.m[ref.Value] = &v
}

// SetDefaultExportDisk sets the file served for disks that have no file of their own.
func SetDefaultExportDisk(file string) {
	simVMs.Lock()
	defer simVMs.Unlock()
	simVMs.defaultDisk = file
}

const toolsVersion = "12325" // VMware Tools 12.1.5

// updateGuestTools makes guest.* follow the power state: tools run while the VM is on.
func updateGuestTools(vm *VirtualMachine) {
	on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
	status, running, guestState := types.VirtualMachineToolsStatusToolsNotRunning,
		types.VirtualMachineToolsRunningStatusGuestToolsNotRunning, "notRunning"
	version, versionStatus := toolsVersion, types.VirtualMachineToolsVersionStatusGuestToolsCurrent
	if simVMFor(vm.Self).noTools {
		status, version, versionStatus = types.VirtualMachineToolsStatusToolsNotInstalled, "0",
			types.VirtualMachineToolsVersionStatusGuestToolsNotInstalled
	} else if on {
		status, running, guestState = types.VirtualMachineToolsStatusToolsOk,
			types.VirtualMachineToolsRunningStatusGuestToolsRunning, "running"
	}
	Map.Update(vm, []types.PropertyChange{
		{Name: "guest.toolsStatus", Val: status},
		{Name: "guest.toolsVersion", Val: version},
		{Name: "guest.toolsVersionStatus", Val: string(versionStatus)},
		{Name: "guest.toolsVersionStatus2", Val: string(versionStatus)},
		{Name: "guest.toolsRunningStatus", Val: string(running)},
		{Name: "guest.guestState", Val: guestState},
		{Name: "summary.guest.toolsStatus", Val: status},
		{Name: "summary.guest.toolsVersionStatus", Val: string(versionStatus)},
		{Name: "summary.guest.toolsVersionStatus2", Val: string(versionStatus)},
		{Name: "summary.guest.toolsRunningStatus", Val: string(running)},
	})
}

func (c *powerVMTask) Run(task *Task) (types.AnyType, types.BaseMethodFault) {
	if c.state == types.VirtualMachinePowerStatePoweredOn && isExporting(c.VirtualMachine.Self) {
		return nil, &types.InvalidState{} // "The operation is not allowed in the current state."
	}
	if c.state == types.VirtualMachinePowerStatePoweredOff &&
		c.VirtualMachine.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn {
		runPowerOffHook(c.VirtualMachine)
	}
	res, err := c.runStock(task)
	if err == nil {
		updateGuestTools(c.VirtualMachine)
	}
	return res, err
}

// ShutdownGuest asks the guest OS to shut down: it needs running tools (ToolsUnavailable
// otherwise, as vSphere), returns at once, and the VM powers off after the shutdown delay.
func (vm *VirtualMachine) ShutdownGuest(ctx *Context, c *types.ShutdownGuest) soap.HasFault {
	r := &methods.ShutdownGuestBody{}
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn {
		r.Fault_ = Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOn,
			ExistingState:  vm.Runtime.PowerState,
		})
		return r
	}
	if vm.Guest.ToolsRunningStatus != string(types.VirtualMachineToolsRunningStatusGuestToolsRunning) {
		r.Fault_ = Fault("Cannot complete operation because VMware Tools is not running in this virtual machine.",
			&types.ToolsUnavailable{})
		return r
	}
	Map.Update(vm, []types.PropertyChange{{Name: "guest.guestState", Val: "shuttingDown"}})
	boot := vm.Summary.Runtime.BootTime
	delay := currentFaults().shutdownDelay()
	go func() {
		time.Sleep(delay)
		runPowerOffHook(vm) // the guest has finished writing its disk when it powers off
		Map.WithLock(vm, func() {
			// powered off (or rebooted) by someone else meanwhile: nothing left to do
			if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOn || !sameTime(boot, vm.Summary.Runtime.BootTime) {
				return
			}
			vm.shutdownGuestStock(ctx, c)
			updateGuestTools(vm)
		})
	}()
	r.Res = new(types.ShutdownGuestResponse)
	return r
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
