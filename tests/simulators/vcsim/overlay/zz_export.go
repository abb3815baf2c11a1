// Added to package simulator at build time (go build -overlay); govmomi 0.24.2 (Debian) lacks
// VirtualMachine.ExportVm and OvfManager.CreateDescriptor.

package simulator

import (
	"fmt"
	"html"
	"net/url"
	"path"
	"reflect"
	"strings"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// exportItem is one file of an export: a disk (disk-N.vmdk) or an attached ISO image.
type exportItem struct {
	key, name, src string
	disk           *types.VirtualDisk
	cdrom          *types.VirtualCdrom
	ctrl           types.BaseVirtualDevice
}

func (vm *VirtualMachine) datastoreFile(name string) string {
	var p object.DatastorePath
	if !p.FromString(name) {
		return ""
	}
	ds := vm.findDatastore(p.Datastore)
	if ds == nil {
		return ""
	}
	return path.Join(ds.Info.GetDatastoreInfo().Url, p.Path)
}

// isoAttached reports whether the CD-ROM still has an ISO image inserted (not ejected).
func isoAttached(cd *types.VirtualCdrom) (string, bool) {
	b, ok := cd.Backing.(*types.VirtualCdromIsoBackingInfo)
	if !ok || b.FileName == "" {
		return "", false
	}
	if c := cd.Connectable; c != nil && !c.Connected && !c.StartConnected {
		return "", false
	}
	return b.FileName, true
}

func deviceKey(vm *VirtualMachine, devices object.VirtualDeviceList, d types.BaseVirtualDevice) (string, types.BaseVirtualDevice) {
	dev := d.GetVirtualDevice()
	ctrl := devices.FindByKey(dev.ControllerKey)
	bus, unit := int32(0), int32(0)
	name := "VirtualController"
	if ctrl != nil {
		name = devices.TypeName(ctrl)
		if c, ok := ctrl.(types.BaseVirtualController); ok {
			bus = c.GetVirtualController().BusNumber
		}
	}
	if dev.UnitNumber != nil {
		unit = *dev.UnitNumber
	}
	return fmt.Sprintf("/%s/%s%d:%d", vm.Self.Value, name, bus, unit), ctrl
}

// exportItems lists the VM's disks as disk-N.vmdk (served from the file configured for the
// disk, else the default export disk, else the datastore file), then attached ISO images.
func (vm *VirtualMachine) exportItems() []exportItem {
	var items []exportItem
	sim := simVMFor(vm.Self)
	simVMs.Lock()
	def := simVMs.defaultDisk
	simVMs.Unlock()
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	for i, d := range devices.SelectByType((*types.VirtualDisk)(nil)) {
		disk := d.(*types.VirtualDisk)
		var src string
		switch {
		case i < len(sim.diskFiles) && sim.diskFiles[i] != "":
			src = sim.diskFiles[i]
		case def != "":
			src = def
		default:
			if b, ok := disk.Backing.(types.BaseVirtualDeviceFileBackingInfo); ok {
				src = vm.datastoreFile(b.GetVirtualDeviceFileBackingInfo().FileName)
			}
		}
		key, ctrl := deviceKey(vm, devices, d)
		items = append(items, exportItem{key: key, name: fmt.Sprintf("disk-%d.vmdk", i), src: src, disk: disk, ctrl: ctrl})
	}
	for _, d := range devices.SelectByType((*types.VirtualCdrom)(nil)) {
		cd := d.(*types.VirtualCdrom)
		iso, ok := isoAttached(cd)
		if !ok {
			continue
		}
		key, ctrl := deviceKey(vm, devices, d)
		var p object.DatastorePath
		p.FromString(iso)
		items = append(items, exportItem{key: key, name: path.Base(p.Path), src: vm.datastoreFile(iso), cdrom: cd, ctrl: ctrl})
	}
	return items
}

// leaseInitDelay is how long a new export lease stays "initializing" before "ready".
const leaseInitDelay = 200 * time.Millisecond

func (vm *VirtualMachine) ExportVm(ctx *Context, req *types.ExportVm) soap.HasFault {
	body := new(methods.ExportVmBody)
	if vm.Runtime.PowerState != types.VirtualMachinePowerStatePoweredOff {
		body.Fault_ = Fault("", &types.InvalidPowerState{
			RequestedState: types.VirtualMachinePowerStatePoweredOff, ExistingState: vm.Runtime.PowerState})
		return body
	}
	lease := NewHttpNfcLease(ctx, vm.Self)
	lease.Info.Lease = lease.Self
	lease.st.export = true
	exportStarted(vm.Self)
	for _, it := range vm.exportItems() {
		lease.files[it.name] = it.src
		if it.disk != nil {
			lease.Info.TotalDiskCapacityInKB += it.disk.CapacityInKB
		}
		lease.Info.DeviceUrl = append(lease.Info.DeviceUrl, types.HttpNfcLeaseDeviceUrl{
			Key: it.key, ImportKey: it.key, Disk: types.NewBool(it.disk != nil), TargetId: it.name,
			Url: (&url.URL{Scheme: "https", Host: "*", Path: nfcPrefix + path.Join(lease.Self.Value, it.name)}).String(),
		})
	}
	// like vSphere, the lease is "initializing" for a moment; clients must wait for "ready"
	lease.State = types.HttpNfcLeaseStateInitializing
	go func() {
		time.Sleep(leaseInitDelay)
		Map.WithLock(lease, func() {
			if lease.State == types.HttpNfcLeaseStateInitializing {
				lease.State = types.HttpNfcLeaseStateReady
				lease.st.lastProgress = time.Now()
				lease.st.timer.Reset(lease.st.timeout)
			}
		})
	}()
	body.Res = &types.ExportVmResponse{Returnval: lease.Self}
	return body
}

func controllerItem(ctrl types.BaseVirtualDevice, id int) string {
	e := html.EscapeString
	c := ctrl.GetVirtualDevice()
	rtype := 6
	sub := strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(reflect.TypeOf(ctrl).Elem().Name(), "Virtual"), "Controller"))
	switch ctrl.(type) {
	case *types.VirtualIDEController:
		rtype, sub = 5, ""
	case *types.ParaVirtualSCSIController:
		sub = "VirtualSCSI"
	case *types.VirtualLsiLogicController:
		sub = "lsilogic"
	case *types.VirtualLsiLogicSASController:
		sub = "lsilogicsas"
	case *types.VirtualAHCIController:
		rtype, sub = 20, "vmware.sata.ahci"
	case *types.VirtualNVMEController:
		rtype, sub = 20, "vmware.nvme.controller"
	}
	if sub != "" {
		sub = "\n        <rasd:ResourceSubType>" + sub + "</rasd:ResourceSubType>"
	}
	label := ""
	if c.DeviceInfo != nil {
		label = c.DeviceInfo.GetDescription().Label
	}
	return fmt.Sprintf("\n      <Item>\n        <rasd:Address>%d</rasd:Address>\n        <rasd:Description>%s</rasd:Description>\n        <rasd:ElementName>%s</rasd:ElementName>\n        <rasd:InstanceID>%d</rasd:InstanceID>%s\n        <rasd:ResourceType>%d</rasd:ResourceType>\n      </Item>",
		ctrl.(types.BaseVirtualController).GetVirtualController().BusNumber, e(label), e(label), id, sub, rtype)
}

// CreateDescriptor writes an OVF descriptor the way vSphere does for an export: one File per
// exported file (sizes from cdp.ovfFiles), disks, controllers, CD-ROMs (an attached ISO is a
// File too, so an export that forgot to eject media shows), NICs, guest OS and firmware.
func (m *OvfManager) CreateDescriptor(ctx *Context, req *types.CreateDescriptor) soap.HasFault {
	body := new(methods.CreateDescriptorBody)
	vm, ok := ctx.Map.Get(req.Obj).(*VirtualMachine)
	if !ok {
		body.Fault_ = Fault("only VirtualMachine is supported", &types.InvalidArgument{InvalidProperty: "obj"})
		return body
	}
	name := vm.Name
	if req.Cdp.Name != "" {
		name = req.Cdp.Name
	}
	e := html.EscapeString
	var refs, disks, items strings.Builder
	ctrls := map[int32]int{}
	id := 2
	nfile, ndisk := 0, 0
	devices := object.VirtualDeviceList(vm.Config.Hardware.Device)
	addCtrl := func(ctrl types.BaseVirtualDevice) int {
		if ctrl == nil {
			return 0
		}
		c := ctrl.GetVirtualDevice()
		if _, seen := ctrls[c.Key]; !seen {
			id++
			ctrls[c.Key] = id
			items.WriteString(controllerItem(ctrl, id))
		}
		return ctrls[c.Key]
	}
	addFile := func(it exportItem) int {
		nfile++
		href, size := it.name, int64(-1)
		for _, f := range req.Cdp.OvfFiles { // client-reported files from the lease download
			if f.DeviceId == it.key {
				href, size = f.Path, f.Size
			}
		}
		sz := ""
		if size >= 0 {
			sz = fmt.Sprintf(" ovf:size=\"%d\"", size)
		}
		fmt.Fprintf(&refs, "\n    <File ovf:href=\"%s\" ovf:id=\"file%d\"%s/>", e(href), nfile, sz)
		return nfile
	}
	for _, it := range vm.exportItems() {
		if it.disk == nil {
			continue
		}
		f := addFile(it)
		ndisk++
		fmt.Fprintf(&disks, "\n    <Disk ovf:capacity=\"%d\" ovf:capacityAllocationUnits=\"byte * 2^10\" ovf:diskId=\"vmdisk%d\" ovf:fileRef=\"file%d\" ovf:format=\"http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized\"/>",
			it.disk.CapacityInKB, ndisk, f)
		parent := addCtrl(it.ctrl)
		id++
		fmt.Fprintf(&items, "\n      <Item>\n        <rasd:AddressOnParent>%d</rasd:AddressOnParent>\n        <rasd:ElementName>Hard disk %d</rasd:ElementName>\n        <rasd:HostResource>ovf:/disk/vmdisk%d</rasd:HostResource>\n        <rasd:InstanceID>%d</rasd:InstanceID>\n        <rasd:Parent>%d</rasd:Parent>\n        <rasd:ResourceType>17</rasd:ResourceType>\n      </Item>",
			*it.disk.UnitNumber, ndisk, ndisk, id, parent)
	}
	isos := map[int32]int{}
	for _, it := range vm.exportItems() {
		if it.cdrom != nil {
			isos[it.cdrom.Key] = addFile(it)
		}
	}
	for i, d := range devices.SelectByType((*types.VirtualCdrom)(nil)) {
		cd := d.(*types.VirtualCdrom)
		parent := addCtrl(devices.FindByKey(cd.ControllerKey))
		id++
		alloc, sub, host := "false", "vmware.cdrom.remotepassthrough", ""
		if f, ok := isos[cd.Key]; ok {
			alloc, sub = "true", "vmware.cdrom.iso"
			host = fmt.Sprintf("\n        <rasd:HostResource>ovf:/file/file%d</rasd:HostResource>", f)
		}
		unit := int32(0)
		if cd.UnitNumber != nil {
			unit = *cd.UnitNumber
		}
		fmt.Fprintf(&items, "\n      <Item ovf:required=\"false\">\n        <rasd:AddressOnParent>%d</rasd:AddressOnParent>\n        <rasd:AutomaticAllocation>%s</rasd:AutomaticAllocation>\n        <rasd:ElementName>CD/DVD drive %d</rasd:ElementName>%s\n        <rasd:InstanceID>%d</rasd:InstanceID>\n        <rasd:Parent>%d</rasd:Parent>\n        <rasd:ResourceSubType>%s</rasd:ResourceSubType>\n        <rasd:ResourceType>15</rasd:ResourceType>\n      </Item>",
			unit, alloc, i+1, host, id, parent, sub)
	}
	var nets strings.Builder
	seenNet := map[string]bool{}
	for i, d := range devices.SelectByType((*types.VirtualEthernetCard)(nil)) {
		nic := d.(types.BaseVirtualEthernetCard).GetVirtualEthernetCard()
		netName := "VM Network"
		if b, ok := nic.Backing.(*types.VirtualEthernetCardNetworkBackingInfo); ok && b.DeviceName != "" {
			netName = b.DeviceName
		}
		if !seenNet[netName] {
			seenNet[netName] = true
			fmt.Fprintf(&nets, "\n    <Network ovf:name=\"%s\">\n      <Description>The %s network</Description>\n    </Network>", e(netName), e(netName))
		}
		sub := strings.TrimPrefix(reflect.TypeOf(d).Elem().Name(), "Virtual")
		id++
		fmt.Fprintf(&items, "\n      <Item>\n        <rasd:AddressOnParent>%d</rasd:AddressOnParent>\n        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>\n        <rasd:Connection>%s</rasd:Connection>\n        <rasd:Description>%s ethernet adapter on &quot;%s&quot;</rasd:Description>\n        <rasd:ElementName>Network adapter %d</rasd:ElementName>\n        <rasd:InstanceID>%d</rasd:InstanceID>\n        <rasd:ResourceSubType>%s</rasd:ResourceSubType>\n        <rasd:ResourceType>10</rasd:ResourceType>\n      </Item>",
			7+i, e(netName), e(sub), e(netName), i+1, id, e(sub))
	}
	netSection := ""
	if nets.Len() > 0 {
		netSection = "\n  <NetworkSection>\n    <Info>The list of logical networks</Info>" + nets.String() + "\n  </NetworkSection>"
	}
	var configs strings.Builder
	if vm.Config.Firmware == string(types.GuestOsDescriptorFirmwareTypeEfi) {
		configs.WriteString("\n      <vmw:Config ovf:required=\"false\" vmw:key=\"firmware\" vmw:value=\"efi\"/>")
	}
	hw := vm.Config.Hardware
	desc := fmt.Sprintf(ovfTemplate, refs.String(), disks.String(), netSection, e(name), e(name), e(req.Cdp.Description),
		e(vm.Config.GuestId), e(name), e(vm.Config.Version), hw.NumCPU, hw.NumCPU, hw.MemoryMB, hw.MemoryMB,
		items.String(), configs.String())
	body.Res = &types.CreateDescriptorResponse{Returnval: types.OvfCreateDescriptorResult{OvfDescriptor: desc}}
	return body
}

const ovfTemplate = `<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>%s
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>%s
  </DiskSection>%s
  <VirtualSystem ovf:id="%s">
    <Info>A virtual machine</Info>
    <Name>%s</Name>
    <AnnotationSection>
      <Info>A human-readable annotation</Info>
      <Annotation>%s</Annotation>
    </AnnotationSection>
    <OperatingSystemSection ovf:id="1" vmw:osType="%s">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>%s</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>%s</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>%d virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>%dMB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>%d</rasd:VirtualQuantity>
      </Item>%s%s
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
`
