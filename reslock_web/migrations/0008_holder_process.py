from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("reslock", "0007_syncstate_version")]

    operations = [
        migrations.AddField(
            model_name="holder",
            name="process",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddField(
            model_name="lockevent",
            name="process",
            field=models.JSONField(blank=True, default=dict),
        ),
    ]
