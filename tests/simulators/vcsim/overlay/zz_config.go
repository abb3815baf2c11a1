// Added to package simulator at build time (go build -overlay): VMs described in a JSON config
// file, created after the default inventory, with deterministic device keys like vSphere's
// (SCSI 1000, disks 2000+, CD-ROM 3000, NICs 4000+) and disks served from given VMDK files.

package simulator

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path"
	"strings"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/types"
)

// SimConfig is the -config file.
type SimConfig struct {
	VMs []VMConfig `json:"vms"`
}

type VMConfig struct {
	Name       string       `json:"name"`
	Datacenter string       `json:"datacenter"` // default DC0
	Folder     string       `json:"folder"`     // below the datacenter's vm folder, "a/b"; created if missing
	Host       string       `json:"host"`       // default DC0_H0 (the standalone host)
	Datastore  string       `json:"datastore"`  // default LocalDS_0
	Power      string       `json:"power"`      // poweredOn (default) or poweredOff
	GuestID    string       `json:"guest_id"`   // default otherLinux64Guest
	Firmware   string       `json:"firmware"`   // bios (default) or efi
	Tools      *bool        `json:"tools"`      // VMware Tools installed (default true)
	UUID       string       `json:"uuid"`       // BIOS uuid, generated when empty
	CPUs       int32        `json:"cpus"`       // default 1
	MemoryMB   int64        `json:"memory_mb"`  // default 1024
	SCSI       string       `json:"scsi"`       // disk controller: lsilogic (default), pvscsi, lsilogic-sas, buslogic
	NICs       *int         `json:"nics"`       // vmxnet3 adapters on "VM Network" (default 1)
	Disks      []DiskConfig `json:"disks"`
	Cdrom      *CdromConfig `json:"cdrom"`
	// OnPowerOff is a command (argv) run to completion whenever the VM powers off (guest shutdown or
	// hard power off), before the power state changes: what the guest's disk holds at that moment is
	// what the export serves. The demo uses it to stop the guest container and write its disk.
	OnPowerOff []string `json:"on_power_off"`
}

type DiskConfig struct {
	File       string `json:"file"`        // stream-optimized VMDK served on export (launcher.py converts raw images)
	CapacityMB int64  `json:"capacity_mb"` // default: the VMDK's virtual size
}

// CdromConfig is `"cdrom": "[LocalDS_0] iso/x.iso"` or {"iso": ..., "connected": false}.
type CdromConfig struct {
	ISO       string `json:"iso"`
	Connected *bool  `json:"connected"`
}

func (c *CdromConfig) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		c.ISO = s
		return nil
	}
	type plain CdromConfig
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode((*plain)(c))
}

// LoadConfig reads and checks a -config file.
func LoadConfig(file string) (*SimConfig, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	cfg := new(SimConfig)
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(cfg); err != nil {
		return nil, fmt.Errorf("config %s: %v", file, err)
	}
	for i := range cfg.VMs {
		vm := &cfg.VMs[i]
		if vm.Name == "" {
			return nil, fmt.Errorf("config %s: vms[%d] has no name", file, i)
		}
		switch vm.Power {
		case "", "on", "poweredOn":
			vm.Power = string(types.VirtualMachinePowerStatePoweredOn)
		case "off", "poweredOff":
			vm.Power = string(types.VirtualMachinePowerStatePoweredOff)
		default:
			return nil, fmt.Errorf("config %s: vm %q: power must be poweredOn or poweredOff, got %q", file, vm.Name, vm.Power)
		}
		switch vm.Firmware {
		case "":
			vm.Firmware = "bios"
		case "bios", "efi":
		default:
			return nil, fmt.Errorf("config %s: vm %q: firmware must be bios or efi, got %q", file, vm.Name, vm.Firmware)
		}
		for j, d := range vm.Disks {
			if d.File == "" {
				if d.CapacityMB <= 0 {
					return nil, fmt.Errorf("config %s: vm %q disk %d: give a file or capacity_mb", file, vm.Name, j)
				}
				continue
			}
			capKB, err := VMDKCapacityKB(d.File)
			if err != nil {
				return nil, fmt.Errorf("config %s: vm %q disk %d: %v", file, vm.Name, j, err)
			}
			if d.CapacityMB <= 0 {
				vm.Disks[j].CapacityMB = (capKB + 1023) / 1024
			}
		}
	}
	return cfg, nil
}

// VMDKCapacityKB reads the virtual size from a sparse (stream-optimized) VMDK header.
func VMDKCapacityKB(file string) (int64, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var hdr struct {
		Magic    [4]byte
		Version  uint32
		Flags    uint32
		Capacity uint64 // sectors
	}
	if err := binary.Read(f, binary.LittleEndian, &hdr); err != nil || string(hdr.Magic[:]) != "KDMV" {
		return 0, fmt.Errorf("%s is not a sparse/stream-optimized VMDK (convert raw images with "+
			"qemu-img convert -O vmdk -o subformat=streamOptimized, as launcher.py does)", file)
	}
	return int64(hdr.Capacity) / 2, nil
}

// placeholderISO writes a small ISO-9660-looking file so that an attached image can be exported.
func placeholderISO(file string) error {
	if _, err := os.Stat(file); err == nil {
		return nil
	}
	if err := os.MkdirAll(path.Dir(file), 0o755); err != nil {
		return err
	}
	b := make([]byte, 40*2048)
	copy(b[16*2048:], "\x01CD001\x01")
	copy(b[16*2048+40:], "VCSIM_PLACEHOLDER")
	copy(b[17*2048:], "\xffCD001\x01")
	return os.WriteFile(file, b, 0o644)
}

// ApplyConfig adds the configured VMs to a created model.
func (m *Model) ApplyConfig(cfg *SimConfig) error {
	ctx := context.Background()
	c := m.Service.client
	for _, vc := range cfg.VMs {
		if err := addConfigVM(ctx, c, vc); err != nil {
			return fmt.Errorf("config vm %q: %v", vc.Name, err)
		}
	}
	return nil
}

func addConfigVM(ctx context.Context, client *vim25.Client, vc VMConfig) error {
	finder := find.NewFinder(client, false)
	dcName := vc.Datacenter
	if dcName == "" {
		dcName = "DC0"
	}
	dc, err := finder.Datacenter(ctx, dcName)
	if err != nil {
		return err
	}
	finder.SetDatacenter(dc)
	folders, err := dc.Folders(ctx)
	if err != nil {
		return err
	}
	folder := folders.VmFolder
	for _, part := range strings.Split(vc.Folder, "/") {
		if part == "" {
			continue
		}
		sub, err := finder.Folder(ctx, path.Join(folder.InventoryPath, part))
		if err != nil {
			if sub, err = folder.CreateFolder(ctx, part); err != nil {
				return err
			}
			sub.InventoryPath = path.Join(folder.InventoryPath, part)
		}
		folder = sub
	}
	hostName := vc.Host
	if hostName == "" {
		hostName = "DC0_H0"
	}
	host, err := finder.HostSystem(ctx, hostName)
	if err != nil {
		return err
	}
	pool, err := host.ResourcePool(ctx)
	if err != nil {
		return err
	}
	dsName := vc.Datastore
	if dsName == "" {
		dsName = "LocalDS_0"
	}
	ds, err := finder.Datastore(ctx, dsName)
	if err != nil {
		return err
	}
	dsURL := Map.Get(ds.Reference()).(*Datastore).Info.GetDatastoreInfo().Url
	// a second VM of the same name gets its own directory, as vSphere does (name_1, name_2, ...)
	dir := vc.Name
	for i := 1; ; i++ {
		if _, err := os.Stat(path.Join(dsURL, dir)); os.IsNotExist(err) {
			break
		}
		dir = fmt.Sprintf("%s_%d", vc.Name, i)
	}

	guest := vc.GuestID
	if guest == "" {
		guest = string(types.VirtualMachineGuestOsIdentifierOtherLinux64Guest)
	}
	cpus, mem := vc.CPUs, vc.MemoryMB
	if cpus <= 0 {
		cpus = 1
	}
	if mem <= 0 {
		mem = 1024
	}
	spec := types.VirtualMachineConfigSpec{
		Name:     vc.Name,
		GuestId:  guest,
		Firmware: vc.Firmware,
		Uuid:     vc.UUID,
		NumCPUs:  cpus,
		MemoryMB: mem,
		Files:    &types.VirtualMachineFileInfo{VmPathName: fmt.Sprintf("[%s] %s/%s.vmx", dsName, dir, vc.Name)},
	}

	var devices object.VirtualDeviceList
	var files []string
	if len(vc.Disks) > 0 {
		scsiType := vc.SCSI
		if scsiType == "" {
			scsiType = "lsilogic"
		}
		scsi, err := devices.CreateSCSIController(scsiType)
		if err != nil {
			return err
		}
		scsi.GetVirtualDevice().Key = 1000
		devices = append(devices, scsi)
		for i, d := range vc.Disks {
			name := fmt.Sprintf("[%s] %s/%s.vmdk", dsName, dir, vc.Name)
			if i > 0 {
				name = fmt.Sprintf("[%s] %s/%s_%d.vmdk", dsName, dir, vc.Name, i)
			}
			disk := devices.CreateDisk(scsi.(types.BaseVirtualController), ds.Reference(), name)
			disk.Key = int32(2000 + i)
			disk.CapacityInKB = d.CapacityMB * 1024
			disk.CapacityInBytes = disk.CapacityInKB * 1024
			devices = append(devices, disk)
			files = append(files, d.File)
		}
	}
	if vc.Cdrom != nil {
		cd := &types.VirtualCdrom{}
		cd.Key = 3000
		cd.ControllerKey = 200 // IDE 0 of the default hardware
		cd.UnitNumber = types.NewInt32(0)
		connected := vc.Cdrom.Connected == nil || *vc.Cdrom.Connected
		cd.Connectable = &types.VirtualDeviceConnectInfo{AllowGuestControl: true, Connected: connected, StartConnected: connected}
		if vc.Cdrom.ISO != "" {
			var p object.DatastorePath
			if !p.FromString(vc.Cdrom.ISO) {
				return fmt.Errorf("cdrom iso %q is not a datastore path like \"[LocalDS_0] iso/tools.iso\"", vc.Cdrom.ISO)
			}
			isoDS, err := finder.Datastore(ctx, p.Datastore)
			if err != nil {
				return fmt.Errorf("cdrom iso %q: %v", vc.Cdrom.ISO, err)
			}
			if err := placeholderISO(path.Join(Map.Get(isoDS.Reference()).(*Datastore).Info.GetDatastoreInfo().Url, p.Path)); err != nil {
				return err
			}
			devices.InsertIso(cd, vc.Cdrom.ISO)
		} else {
			cd.Backing = &types.VirtualCdromRemotePassthroughBackingInfo{}
		}
		devices = append(devices, cd)
	}
	nics := 1
	if vc.NICs != nil {
		nics = *vc.NICs
	}
	for i := 0; i < nics; i++ {
		nic := &types.VirtualVmxnet3{}
		nic.Key = int32(4000 + i)
		nic.AddressType = string(types.VirtualEthernetCardMacTypeGenerated)
		nic.Backing = &types.VirtualEthernetCardNetworkBackingInfo{
			VirtualDeviceDeviceBackingInfo: types.VirtualDeviceDeviceBackingInfo{DeviceName: "VM Network"},
		}
		nic.Connectable = &types.VirtualDeviceConnectInfo{AllowGuestControl: true, Connected: true, StartConnected: true}
		devices = append(devices, nic)
	}
	spec.DeviceChange, err = devices.ConfigSpec(types.VirtualDeviceConfigSpecOperationAdd)
	if err != nil {
		return err
	}

	task, err := folder.CreateVM(ctx, spec, pool, host)
	if err != nil {
		return err
	}
	info, err := task.WaitForResult(ctx, nil)
	if err != nil {
		return err
	}
	ref := info.Result.(types.ManagedObjectReference)
	setSimVM(ref, simVM{noTools: vc.Tools != nil && !*vc.Tools, diskFiles: files, onPowerOff: vc.OnPowerOff})
	vm := object.NewVirtualMachine(client, ref)
	svm := Map.Get(ref).(*VirtualMachine)
	Map.WithLock(svm, func() {
		updateGuestTools(svm)
		labelDevices(svm)
	})
	if vc.Power == string(types.VirtualMachinePowerStatePoweredOn) {
		task, err := vm.PowerOn(ctx)
		if err != nil {
			return err
		}
		if err := task.Wait(ctx); err != nil {
			return err
		}
	}
	return nil
}

// InitDefaultVMs gives the default inventory's VMs running tools (when on) and, for export,
// the default disk; their disks' capacity becomes the default disk's virtual size.
func (m *Model) InitDefaultVMs(defaultDisk string) error {
	var capKB int64
	if defaultDisk != "" {
		var err error
		if capKB, err = VMDKCapacityKB(defaultDisk); err != nil {
			return err
		}
		SetDefaultExportDisk(defaultDisk)
	}
	for _, obj := range Map.All("VirtualMachine") {
		vm := obj.(*VirtualMachine)
		Map.WithLock(vm, func() {
			updateGuestTools(vm)
			renumberDevices(vm)
			if capKB == 0 {
				return
			}
			for _, d := range vm.Config.Hardware.Device {
				if disk, ok := d.(*types.VirtualDisk); ok {
					disk.CapacityInKB = capKB
					disk.CapacityInBytes = capKB * 1024
				}
			}
		})
	}
	return nil
}

// renumberDevices gives a default-inventory VM vSphere-like, deterministic device keys (stock
// vcsim picks random keys for its CD-ROM and disk) and moves its CD-ROM from the SCSI controller,
// where stock vcsim puts it at the disk's unit number, to IDE 0.
func renumberDevices(vm *VirtualMachine) {
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	keys := map[int32]int32{}
	next := map[string]int32{"scsi": 1000, "disk": 2000, "cdrom": 3000}
	for _, d := range devices {
		dev := d.GetVirtualDevice()
		var kind string
		switch d.(type) {
		case types.BaseVirtualSCSIController:
			kind = "scsi"
		case *types.VirtualDisk:
			kind = "disk"
		case *types.VirtualCdrom:
			kind = "cdrom"
			if ide, ok := devices.FindByKey(dev.ControllerKey).(*types.VirtualIDEController); !ok || ide == nil {
				dev.ControllerKey = 200
				dev.UnitNumber = types.NewInt32(0)
			}
		default:
			continue
		}
		keys[dev.Key] = next[kind]
		next[kind]++
	}
	for _, d := range devices {
		dev := d.GetVirtualDevice()
		if k, ok := keys[dev.Key]; ok {
			dev.Key = k
		}
		if k, ok := keys[dev.ControllerKey]; ok {
			dev.ControllerKey = k
		}
		if c, ok := d.(types.BaseVirtualController); ok {
			vc := c.GetVirtualController()
			vc.Device = nil
		}
	}
	for _, d := range devices { // rebuild the controllers' child lists
		dev := d.GetVirtualDevice()
		if c, ok := devices.FindByKey(dev.ControllerKey).(types.BaseVirtualController); ok && c != nil {
			vc := c.GetVirtualController()
			vc.Device = append(vc.Device, dev.Key)
		}
	}
	vm.updateDiskLayouts()
	labelDevices(vm)
}

// labelDevices names devices as the vSphere client shows them ("Hard disk 1", ...).
func labelDevices(vm *VirtualMachine) {
	n := map[string]int{}
	for _, d := range vm.Config.Hardware.Device {
		dev := d.GetVirtualDevice()
		var label string
		switch x := d.(type) {
		case types.BaseVirtualSCSIController:
			label = fmt.Sprintf("SCSI controller %d", x.GetVirtualSCSIController().BusNumber)
		case *types.VirtualDisk:
			n["disk"]++
			label = fmt.Sprintf("Hard disk %d", n["disk"])
		case *types.VirtualCdrom:
			n["cdrom"]++
			label = fmt.Sprintf("CD/DVD drive %d", n["cdrom"])
		case types.BaseVirtualEthernetCard:
			n["nic"]++
			label = fmt.Sprintf("Network adapter %d", n["nic"])
		default:
			continue
		}
		if dev.DeviceInfo == nil {
			dev.DeviceInfo = &types.Description{}
		}
		dev.DeviceInfo.GetDescription().Label = label
	}
}
