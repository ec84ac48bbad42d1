//! Controller training (feature `train`): the teacher, its data files, and the fit.

pub mod data;
pub mod fit;
pub mod teacher;
