"""One optimizer step of the trainer's ``train_step`` on a fixed global batch, split over the processes.

Run alone or under ``accelerate launch --num_processes N``; writes the updated parameters to argv[1].
"""
import sys

import torch
from accelerate import Accelerator

from mclip_hbt.model.clip import create_model
from mclip_hbt.model.loss import ContrastiveLoss
from mclip_hbt.train.checkpoints import TrainingState
from mclip_hbt.train.config import TrainConfig
from mclip_hbt.train.loop import build_optimizer, train_step

GLOBAL_BATCH = 8
CAPTIONS = ["ein roter Kreis", "a blue square on the left", "两个绿色的三角形", "une petite étoile jaune",
            "un cuore rosso", "mały niebieski krzyż", "büyük beyaz bir kare", "a large black heart at the top"]

accelerator = Accelerator(cpu=True)
torch.manual_seed(0)
# Dropout off: the split and the whole batch must see the same function.
model = create_model("tiny", text_config_overrides=dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=80,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
config = TrainConfig(lr=1e-2, weight_decay=0.1, grad_clip=1.0, batch_size=GLOBAL_BATCH, text_pair_weight=0.5)
generator = torch.Generator().manual_seed(1)
images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
pairs = [CAPTIONS[(i + 3) % GLOBAL_BATCH] if i % 3 else None for i in range(GLOBAL_BATCH)]

local = GLOBAL_BATCH // accelerator.num_processes
part = slice(accelerator.process_index * local, (accelerator.process_index + 1) * local)
batch = {"images": images[part], "captions": CAPTIONS[part], "pair_captions": pairs[part],
         "pair_mask": torch.tensor([p is not None for p in pairs[part]])}

optimizer = build_optimizer(model, config, accelerator.device)
prepared, optimizer = accelerator.prepare(model, optimizer)
train_step(prepared, model, batch, ContrastiveLoss("clip", text_pair_weight=0.5), optimizer, accelerator, config,
           TrainingState())
if accelerator.is_main_process:
    torch.save({"world_size": accelerator.num_processes,
                "params": {k: v.detach().clone() for k, v in model.state_dict().items()}}, sys.argv[1])
