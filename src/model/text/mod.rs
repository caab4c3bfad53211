//! Text encoders: prompts to the caption features the text-to-video transformer is conditioned on. Latte-1
//! uses T5 v1.1 XXL ([`t5`]); tokenizing (SentencePiece) happens in the Python package.

pub mod t5;
