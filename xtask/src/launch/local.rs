//! The board's QEMU on this host (`kind = "qemu"`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::{Guest, Launcher, start_here};
use crate::config::Board;
use crate::qemu::{QmpListener, Session};
use crate::qemu_cmd::QemuCmd;
use crate::qmp::{Qmp, QmpEvent};

/// Spawns the run's command as it is, with QMP on a socket we listen on.
pub struct Local<'a> {
    board: &'a Board,
}

impl<'a> Local<'a> {
    pub fn new(board: &'a Board) -> Local<'a> {
        Local { board }
    }
}

impl Launcher for Local<'_> {
    fn board(&self) -> &Board {
        self.board
    }

    fn start(
        &self,
        cmd: &QemuCmd,
        dir: &Path,
        limit: Duration,
        process: &mut Option<Box<dyn Guest>>,
        on_event: &mut dyn FnMut(&mut Qmp, QmpEvent),
    ) -> Result<Session> {
        let listener = QmpListener::new()?;
        let cmd = cmd.clone().qmp(listener.chardev());
        cmd.write_files()?;
        start_here(&cmd.argv(), &listener, dir, limit, process, on_event)
    }
}
