package replication

import "github.com/jackc/pglogrepl"

// SlotView is a slot as walwatch shows it in JSON (the CLI's slot list, the
// control plane's status), with its warnings. LSNs are in PostgreSQL's text form,
// "" when null.
type SlotView struct {
	Name              string   `json:"name"`
	Plugin            string   `json:"plugin"`
	SlotType          string   `json:"slot_type"`
	Database          string   `json:"database"`
	Temporary         bool     `json:"temporary"`
	Active            bool     `json:"active"`
	ActivePID         int32    `json:"active_pid"`
	RestartLSN        string   `json:"restart_lsn"`
	ConfirmedFlushLSN string   `json:"confirmed_flush_lsn"`
	WALHeldBytes      int64    `json:"wal_held_bytes"`
	WALStatus         string   `json:"wal_status"`
	SafeWALSize       *int64   `json:"safe_wal_size"` // null: unlimited
	Warnings          []string `json:"warnings"`
}

// NewSlotView describes s, flagging it when it holds at least largeWAL bytes.
func NewSlotView(s SlotInfo, largeWAL int64) SlotView {
	warnings := s.Warnings(largeWAL)
	if warnings == nil {
		warnings = []string{} // [] in JSON, not null
	}
	return SlotView{
		Name:              s.Name,
		Plugin:            s.Plugin,
		SlotType:          s.SlotType,
		Database:          s.Database,
		Temporary:         s.Temporary,
		Active:            s.Active,
		ActivePID:         s.ActivePID,
		RestartLSN:        lsnString(s.RestartLSN),
		ConfirmedFlushLSN: lsnString(s.ConfirmedFlushLSN),
		WALHeldBytes:      s.WALHeldBytes,
		WALStatus:         s.WALStatus,
		SafeWALSize:       s.SafeWALSize,
		Warnings:          warnings,
	}
}

// lsnString prints an LSN as PostgreSQL does, and 0 (null) as "".
func lsnString(lsn pglogrepl.LSN) string {
	if lsn == 0 {
		return ""
	}
	return lsn.String()
}
